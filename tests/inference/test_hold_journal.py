"""A call in flight keeps a journal on its hold; the stale-hold sweep settles only calls
whose journal went silent, for what it says was delivered, and records them."""

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from accounts.services import create_api_key
from credits import services as credit_services
from credits import tasks as credit_tasks
from credits.models import CreditHold, HoldStatus
from credits.selectors import call_charge
from credits.services import calculate_inference_cost
from inference import idempotency, services
from inference.backends import Prompt, count_tokens
from inference.exceptions import IdempotencyKeyReused
from inference.models import IdempotentRequest, UsageRecord, UsageStatus
from tests.books import USD, assert_books_balance
from tests.seeds import seed_demo_models

ROOT = Path(__file__).resolve().parents[2]


# The demo backend answers this prompt with 49 tokens.
def start(user, *, max_tokens=64, streamed=True, content="once upon a time"):
    return services.start_call(user=user, api_key=None, model_id="demo-small",
                               prompt=Prompt(kind="chat", messages=[{"role": "user",
                                                                      "content": content}]),
                               max_tokens=max_tokens, endpoint="chat.completions",
                               streamed=streamed)


def cost_of(call, completion_tokens: int) -> int:
    return calculate_inference_cost(
        input_tokens=call.prompt_tokens, output_tokens=completion_tokens,
        input_price_per_million_micros=call.price.input_price_per_million_micros,
        output_price_per_million_micros=call.price.output_price_per_million_micros)


def hold_of(call) -> CreditHold:
    return CreditHold.objects.get(pk=call.hold.pk)


def charged(call) -> int:
    found = call_charge(request_id=call.request_id)
    return found.charged_micros if found else 0


# --- the journal -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_journal_is_written_at_the_first_token_then_every_16_tokens(spender, fund):
    fund(spender, 1)
    call = start(spender)
    tokens = call.tokens()

    next(tokens)
    assert (hold_of(call).delivered_tokens, hold_of(call).delivered_micros) == (1, cost_of(call, 1))
    for _ in range(15):
        next(tokens)
    assert hold_of(call).delivered_tokens == 1  # 16 delivered, nothing new written yet
    next(tokens)
    journal = hold_of(call)
    assert (journal.delivered_tokens, journal.delivered_micros) == (17, cost_of(call, 17))
    assert journal.journal_at is not None
    "".join(tokens)
    assert_books_balance(spender.pk)


@pytest.mark.django_db
def test_a_stream_older_than_the_stale_age_with_a_live_journal_is_charged_in_full(
        spender, fund, settings):
    # Measured before: a stream outliving STALE_HOLD_SECONDS lost its hold to the sweep and
    # was charged only what was free. Now the journal says it is alive.
    fund(spender, 1)
    call = start(spender)
    tokens = call.tokens()
    first = next(tokens)
    CreditHold.objects.filter(pk=call.hold.pk).update(
        created_at=timezone.now() - dt.timedelta(seconds=settings.STALE_HOLD_SECONDS + 60))

    assert credit_tasks.release_stale_holds() == 0

    text = first + "".join(tokens)
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert record.status == UsageStatus.SUCCEEDED
    assert record.cost_micros == charged(call) == cost_of(call, record.completion_tokens) > 0
    assert hold_of(call).status == HoldStatus.CAPTURED and text
    spender.refresh_from_db()
    assert spender.credit_balance == USD - record.cost_micros
    assert_books_balance(spender.pk)


@pytest.mark.django_db
def test_a_call_that_died_mid_stream_is_charged_its_journal_and_recorded_by_the_sweep(
        spender, fund, settings):
    fund(spender, 1)
    call = start(spender)
    tokens = call.tokens()
    for _ in range(20):
        next(tokens)
    call.settled = True  # the process dies here: its finally never settles
    tokens.close()
    journal = hold_of(call)
    assert journal.status == HoldStatus.ACTIVE and journal.delivered_tokens == 17
    settings.STALE_HOLD_SECONDS = 0

    assert credit_tasks.release_stale_holds() == 1

    assert charged(call) == journal.delivered_micros == cost_of(call, 17)
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status, record.cost_micros, record.completion_tokens) == (
        UsageStatus.SWEPT, journal.delivered_micros, 17)
    assert (record.model_id, record.prompt_tokens, record.streamed) == (
        "demo-small", call.prompt_tokens, True)
    assert credit_tasks.release_stale_holds() == 0  # a rerun records nothing twice
    assert UsageRecord.objects.filter(request_id=call.request_id).count() == 1
    assert_books_balance(spender.pk)


@pytest.mark.django_db
def test_a_call_the_sweep_took_for_dead_is_charged_once_in_full_when_it_finishes(
        spender, fund, settings):
    fund(spender, 1)
    call = start(spender)
    tokens = call.tokens()
    next(tokens)
    next(tokens)
    settings.STALE_HOLD_SECONDS = 0
    assert credit_tasks.release_stale_holds() == 1  # captured 1 token's worth, recorded SWEPT

    "".join(tokens)  # ...but the call was alive: its own settlement charges the rest

    record = UsageRecord.objects.get(request_id=call.request_id)
    assert record.status == UsageStatus.SUCCEEDED
    assert record.cost_micros == charged(call) == cost_of(call, record.completion_tokens)
    spender.refresh_from_db()
    assert spender.credit_balance == USD - record.cost_micros
    assert_books_balance(spender.pk)


# --- settlement faults ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_capture_that_committed_but_raised_is_not_charged_again(spender, fund, monkeypatch):
    fund(spender, 1)
    real_capture = credit_services.capture

    def capture_then_lose_the_connection(**kwargs):
        real_capture(**kwargs)  # committed...
        raise OperationalError("server closed the connection unexpectedly")  # ...at COMMIT

    monkeypatch.setattr(credit_services, "capture", capture_then_lose_the_connection)
    call = start(spender)
    "".join(call.tokens())

    record = UsageRecord.objects.get(request_id=call.request_id)
    assert record.cost_micros == charged(call) == cost_of(call, record.completion_tokens)
    spender.refresh_from_db()
    assert spender.credit_balance == USD - record.cost_micros
    assert_books_balance(spender.pk)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgresql_down_when_the_capture_runs_is_charged_from_the_journal(spender, fund,
                                                                           monkeypatch):
    seed_demo_models()
    fund(spender, 1)
    down = {"on": False}

    def database(execute, sql, params, many, context):
        if down["on"]:
            raise OperationalError("could not connect to server: Connection refused")
        return execute(sql, params, many, context)

    real_capture = credit_services.capture

    def capture(**kwargs):
        down["on"] = True  # PostgreSQL goes away as the call settles
        return real_capture(**kwargs)

    monkeypatch.setattr(credit_services, "capture", capture)
    call = start(spender, max_tokens=40)
    with connection.execute_wrapper(database):
        text = "".join(call.tokens())
    down["on"] = False
    journal = hold_of(call)
    assert text and journal.status == HoldStatus.ACTIVE and journal.delivered_micros > 0
    assert not UsageRecord.objects.filter(request_id=call.request_id).exists()

    swept = credit_services.release_stale_holds(older_than_seconds=0)
    services.record_swept_calls(hold_ids=[h.hold_id for h in swept.settled])

    assert charged(call) == journal.delivered_micros
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status, record.cost_micros) == (UsageStatus.SWEPT, journal.delivered_micros)
    assert_books_balance(spender.pk)


# --- the idempotency key of a live call ------------------------------------------------------


@pytest.mark.django_db
def test_the_key_of_a_call_with_a_live_journal_is_not_freed_however_old(spender, fund, settings):
    fund(spender, 1)
    call = start(spender, streamed=False)
    long_ago = timezone.now() - dt.timedelta(seconds=settings.STALE_HOLD_SECONDS + 60)
    IdempotentRequest.objects.create(user=spender, key="slow", endpoint="chat.completions",
                                     body_hash=idempotency.body_fingerprint("chat.completions", {}),
                                     request_id=call.request_id, created_at=long_ago)
    CreditHold.objects.filter(pk=call.hold.pk).update(created_at=long_ago)
    call.started_monotonic -= settings.STALE_HOLD_SECONDS + 60  # the call, too, began long ago
    tokens = call.tokens()
    next(tokens)  # still generating: the journal moved just now

    with pytest.raises(IdempotencyKeyReused) as refused:
        idempotency.claim_idempotency_key(user=spender, key="slow", endpoint="chat.completions",
                                          body={}, request_id=services.new_request_id())
    assert refused.value.code == "idempotency_request_in_progress"
    assert credit_services.release_stale_holds().settled == ()
    "".join(tokens)


# --- the stream time limit, over real HTTP ---------------------------------------------------


@pytest.mark.postgres
def test_a_stream_past_its_time_limit_ends_with_an_error_event_and_pays_what_it_delivered(
        live_server, demo_models, spender, fund, settings):
    settings.STREAM_MAX_SECONDS = 1
    settings.DEMO_BACKEND_TOKEN_DELAY_MS = 150
    fund(spender, 1)
    _key, secret = create_api_key(user=spender, name="stream")
    events = []
    with httpx.Client(base_url=live_server.url, timeout=30) as client, client.stream(
            "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
            json={"model": "demo-small", "max_tokens": 60, "stream": True,
                  "messages": [{"role": "user", "content": "once upon a time"}]}) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]

    error = events[-1]["error"]
    assert error["code"] == "stream_time_limit" and error["type"] == "server_error"
    assert set(error) >= {"message", "type", "param", "code"}
    delivered = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    record = UsageRecord.objects.get(user=spender)
    assert record.status == UsageStatus.TIME_LIMIT
    assert 3 <= record.completion_tokens < 20  # about a second's worth of a longer reply
    assert record.cost_micros == call_charge(request_id=record.request_id).charged_micros > 0
    assert count_tokens(delivered) == record.completion_tokens
    assert_books_balance(spender.pk)


# --- a worker killed mid-stream ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_server_killed_mid_stream_is_charged_its_journal_and_recorded_by_the_sweep(
        spender, fund, settings):
    seed_demo_models()
    fund(spender, 1)
    _key, secret = create_api_key(user=spender, name="killed")
    port = _free_port()
    db = connection.settings_dict
    env = {**os.environ,
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "DEMO_BACKEND_TOKEN_DELAY_MS": "120", "LOG_LEVEL": "WARNING"}
    # The production server's kind (ASGI, uvicorn): a process that streams as it generates.
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    received = []
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client, \
                client.stream("POST", "/v1/chat/completions",
                              headers={"Authorization": f"Bearer {secret}"},
                              json={"model": "demo-small", "max_tokens": 60, "stream": True,
                                    "messages": [{"role": "user",
                                                  "content": "once upon a time"}]}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content":"' in line:
                    received.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
                if len(received) == 12:  # about 1.4 s in: two journal writes behind us
                    os.kill(server.pid, signal.SIGKILL)
                    break
    finally:
        server.kill()
        server.wait(10)

    hold = CreditHold.objects.get(user=spender)
    assert hold.status == HoldStatus.ACTIVE  # nobody settled it
    assert not UsageRecord.objects.filter(user=spender).exists()
    assert 1 <= hold.delivered_tokens <= count_tokens("".join(received)) + 1
    settings.STALE_HOLD_SECONDS = 0

    assert credit_tasks.release_stale_holds() == 1

    record = UsageRecord.objects.get(user=spender)
    charge = call_charge(request_id=hold.reference).charged_micros
    assert charge == hold.delivered_micros > 0
    assert (record.status, record.cost_micros, record.completion_tokens) == (
        UsageStatus.SWEPT, charge, hold.delivered_tokens)
    spender.refresh_from_db()
    assert (spender.credit_balance, spender.credit_held) == (USD - charge, 0)
    assert_books_balance(spender.pk)
    print(f"SIGKILL after {len(received)} tokens received: journal {hold.delivered_tokens} "
          f"tokens, charged {charge} micros")


@pytest.mark.django_db
def test_a_non_streamed_call_answered_within_a_second_writes_no_journal(spender, fund):
    """Nothing of a non-streamed call is delivered before its answer: its journal only says it
    is alive, once a second, so a short call costs no write for it."""
    fund(spender, 1)
    call = start(spender, streamed=False)
    tokens = call.tokens()

    next(tokens)
    assert hold_of(call).journal_at is None
    "".join(tokens)
    assert hold_of(call).status == HoldStatus.CAPTURED
    assert_books_balance(spender.pk)
