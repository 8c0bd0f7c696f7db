"""Each request's thread for Django's sync steps is reused (config/request_threads.py), on
the site and the gateway alike, and never handed to a request while another's work is still
on it."""

import collections
import threading

import httpx
import pytest

from config.request_threads import RequestThreads
from inference.models import UsageRecord
from tests.seeds import seed_demo_models
from tests.waiting import wait_for

CALL = {"model": "demo-small", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
def threads_used():
    """The threads (held, so none is freed and its identity reused) that sent each
    request's request_started signal, by path: Django sends it on the request's thread."""
    from django.core import signals

    threads = collections.defaultdict(list)

    def note_thread(scope=None, **kwargs):
        threads[scope["path"]].append(threading.current_thread())

    signals.request_started.connect(note_thread, weak=False)
    yield threads
    signals.request_started.disconnect(note_thread)


@pytest.mark.django_db(transaction=True)
def test_key_calls_one_after_another_reuse_one_request_thread(live_server, make_user, fund,
                                                               threads_used):
    """Each call's sync steps (the request signals, rendering, closing) run on a thread of
    its own; the gateway hands the next call that thread instead of starting one (and a
    second to join it) per call."""
    from accounts.services import create_api_key

    seed_demo_models()
    user = make_user(promotion_eligible=False)
    fund(user, 5)
    secret = create_api_key(user=user, name="threads")[1]
    with httpx.Client(base_url=live_server.url, timeout=30,
                      headers={"Authorization": f"Bearer {secret}"}) as client:
        for _ in range(8):
            assert client.post("/v1/chat/completions", json=CALL).status_code == 200
    used = threads_used["/v1/chat/completions"]
    assert len(used) == 8
    assert len({id(thread) for thread in used}) <= 2  # two if a clean-up had not run yet
    assert UsageRecord.objects.count() == 8


@pytest.mark.django_db(transaction=True)
def test_pages_one_after_another_reuse_their_request_threads(live_server, threads_used):
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        for _ in range(8):
            assert client.get("/accounts/login/").status_code == 200
    used = threads_used["/accounts/login/"]
    assert len(used) == 8
    assert len({id(thread) for thread in used}) <= 2


def test_a_request_thread_is_handed_out_again_only_once_its_work_is_done():
    """A call cancelled while its render still runs (a client gone) must not hand that busy
    thread to the next call, which would then wait behind the render."""
    threads = RequestThreads(keep_idle=4)
    busy = threads.take()
    render_may_finish = threading.Event()
    busy.submit(render_may_finish.wait, 10)
    threads.give_back(busy)  # the request ended; its render has not
    try:
        other = threads.take()
        assert other is not busy
        assert threads.idle_count() == 0
    finally:
        render_may_finish.set()
    assert wait_for(lambda: threads.idle_count() == 1)
    assert threads.take() is busy  # used again, not started anew
    threads.give_back(other)


def test_request_threads_beyond_those_kept_idle_are_let_go():
    threads = RequestThreads(keep_idle=1)
    first, second = threads.take(), threads.take()
    threads.give_back(first)
    assert wait_for(lambda: threads.idle_count() == 1)
    threads.give_back(second)  # one is idle already: this one goes

    def refuses_work() -> bool:
        try:
            second.submit(lambda: None)
        except RuntimeError:
            return True
        return False

    assert wait_for(refuses_work)
    assert threads.idle_count() == 1
    assert threads.take() is first
    assert first.submit(lambda: 7).result(timeout=5) == 7


@pytest.mark.postgres  # SQLite's in-memory test database is never closed
def test_a_request_thread_hands_back_a_database_connection_its_request_left_open(
        transactional_db):
    """Django's request_finished closes a request's connections, but is skipped when the
    response fails to send: the thread's last step hands the connection back instead, so a
    pooled connection is not kept by an idle thread."""
    from django.db import connection

    threads = RequestThreads(keep_idle=4)
    executor = threads.take()

    def open_a_connection():
        connection.ensure_connection()
        return connection.connection is not None

    assert executor.submit(open_a_connection).result(timeout=10)
    threads.give_back(executor)
    assert wait_for(lambda: threads.idle_count() == 1)
    assert executor.submit(lambda: connection.connection is None).result(timeout=10)
    threads.give_back(threads.take())
