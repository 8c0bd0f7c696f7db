"""A stream's upstream is asked while its hold commits, not after: once the hold is certain
(its credit counted under the account's lock), the gateway starts the upstream request and
writes the hold meanwhile. Nothing reaches the client before the hold has committed; a call
the credit cannot pay for never reaches the upstream; a hold that fails after the upstream
was asked ends that request and charges nothing; an answer not streamed keeps the plain
order; a client that leaves while its call starts leaves nothing held or claimed; and one
that leaves an answer being generated may retry its Idempotency-Key at once (live ASGI
server, real HTTP upstream, PostgreSQL)."""

import datetime as dt
import gc
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from django.db import DatabaseError, transaction
from django.utils import timezone

from accounts.services import create_api_key
from credits.models import CreditHold, HoldStatus
from credits.money import format_usd, usd_to_micros
from credits.services.writer import LedgerWriter
from inference.models import (
    AiModel,
    Deployment,
    IdempotentRequest,
    ModelPrice,
    Upstream,
    UsageRecord,
    UsageStatus,
)
from inference.services import MeteredCall
from tests.books import assert_books_balance
from tests.loopback import loopback_http
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres]

TOKENS = 12


class _StreamingHandler(BaseHTTPRequestHandler):
    """Streams TOKENS tokens `server.delay` seconds apart (answers whole when not asked to
    stream); notes each request as it arrives and a client that hangs up before the end."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _event(self, payload) -> None:
        data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
        self.wfile.write(data.encode())
        self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if self.server.refuse:
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        if not body.get("stream"):
            time.sleep(self.server.first_delay)
            answer = json.dumps({"id": "up", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "tok " * TOKENS},
                 "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": TOKENS}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            time.sleep(self.server.first_delay)
            self.wfile.write(b": thinking\n\n")  # a comment: a client gone by now is noticed
            self.wfile.flush()
            for _ in range(TOKENS):
                self._event({"id": "up", "choices": [{"index": 0, "delta": {"content": "tok "}}]})
                time.sleep(self.server.delay)
            self._event({"id": "up", "choices": [{"index": 0, "delta": {},
                                                  "finish_reason": "stop"}]})
            self._event({"id": "up", "choices": [],
                         "usage": {"prompt_tokens": 5, "completion_tokens": TOKENS}})
            self._event("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            self.server.hung_up.set()
        self.close_connection = True


@pytest.fixture
def upstream():
    with loopback_http(_StreamingHandler, requests=[], hung_up=threading.Event(), delay=0.02,
                       first_delay=0, refuse=False) as server:
        yield server


@pytest.fixture
def routed(upstream, transactional_db):
    model = AiModel.objects.create(id="gpt-early", max_output_tokens=1000, context_length=10_000)
    ModelPrice.objects.create(model=model, input_price_per_million_micros=1_000_000,
                              output_price_per_million_micros=4_000_000,
                              effective_from=timezone.now() - dt.timedelta(days=1))
    port = upstream.server_port
    Deployment.objects.create(model=model, upstream_model="up-model", position=0,
                              upstream=Upstream.objects.create(
                                  name="early", base_url=f"http://127.0.0.1:{port}/v1",
                                  api_key="sk-up", connect_timeout_seconds=1,
                                  read_timeout_seconds=5))
    return model


def _customer(make_user, fund, usd: int):
    user = make_user(promotion_eligible=False)
    if usd:
        fund(user, usd)
    return user, create_api_key(user=user, name="early")[1]


def _on_hold_write(monkeypatch, action) -> None:
    """Runs `action` on the ledger thread, under the account's lock, just before a hold's
    rows are written (after authorize() has found the credit and called `on_granted`)."""
    original = LedgerWriter.flush

    def flush(self):
        if self.operation_key.startswith("hold:"):
            action()
        return original(self)

    monkeypatch.setattr(LedgerWriter, "flush", flush)


STREAM = {"model": "gpt-early", "stream": True, "max_tokens": 50,
          "stream_options": {"include_usage": True},
          "messages": [{"role": "user", "content": "hello"}]}


def test_the_upstream_is_asked_while_the_hold_commits_and_no_token_leaves_before_it(
        live_server, upstream, routed, make_user, fund, monkeypatch):
    user, secret = _customer(make_user, fund, usd=5)
    asked_during_the_hold, committed = [], []

    def slow_hold_write():
        asked_during_the_hold.append(wait_for(lambda: upstream.requests, seconds=3))
        # A slow write and commit: the upstream's first tokens are ready before they end.
        time.sleep(0.2)
        transaction.on_commit(lambda: committed.append(time.monotonic()))

    _on_hold_write(monkeypatch, slow_hold_write)
    first_token_at, charged = None, None
    with httpx.Client(base_url=live_server.url, timeout=10) as client, client.stream(
            "POST", "/v1/chat/completions", json=STREAM,
            headers={"Authorization": f"Bearer {secret}"}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first_token_at is None and any(choice.get("delta", {}).get("content")
                                               for choice in chunk["choices"]):
                first_token_at = time.monotonic()
            charged = (chunk.get("credits") or {}).get("charged", charged)

    assert response.status_code == 200
    assert asked_during_the_hold == [True]  # before: only once the hold had committed
    assert committed and first_token_at > committed[0]
    record = UsageRecord.objects.get()
    assert record.status == UsageStatus.SUCCEEDED and record.completion_tokens == TOKENS
    assert usd_to_micros(charged) == record.cost_micros > 0
    assert_books_balance(user.pk)


def test_an_answer_not_streamed_asks_the_upstream_once_its_hold_has_committed(
        live_server, upstream, routed, make_user, fund, monkeypatch):
    user, secret = _customer(make_user, fund, usd=5)
    asked_during_the_hold = []
    _on_hold_write(monkeypatch, lambda: asked_during_the_hold.append(bool(upstream.requests)))
    response = httpx.post(f"{live_server.url}/v1/chat/completions", timeout=10,
                          json={**STREAM, "stream": False},
                          headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 200
    assert asked_during_the_hold == [False] and len(upstream.requests) == 1
    record = UsageRecord.objects.get()
    assert record.status == UsageStatus.SUCCEEDED
    assert response.headers["X-Credits-Charged"] == format_usd(record.cost_micros)
    assert_books_balance(user.pk)


def test_a_call_the_credit_cannot_pay_for_never_reaches_the_upstream(
        live_server, upstream, routed, make_user, fund, monkeypatch):
    user, secret = _customer(make_user, fund, usd=0)
    asked = []
    opened = MeteredCall.open_upstream
    monkeypatch.setattr(MeteredCall, "open_upstream",
                        lambda call: (asked.append(call.request_id), opened(call)))
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=STREAM, timeout=10,
                          headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"
    assert asked == [] and upstream.requests == []
    assert not CreditHold.objects.exists()
    assert_books_balance(user.pk)


def test_a_hold_that_fails_after_the_upstream_was_asked_ends_that_request_and_charges_nothing(
        live_server, upstream, routed, make_user, fund, monkeypatch):
    user, secret = _customer(make_user, fund, usd=5)
    upstream.delay = 0.1  # still streaming when the hold fails
    asked = []

    def failing_hold_write():
        asked.append(wait_for(lambda: upstream.requests, seconds=3))
        raise DatabaseError("the connection was lost while writing the hold")

    _on_hold_write(monkeypatch, failing_hold_write)
    response = httpx.post(f"{live_server.url}/v1/chat/completions", timeout=10,
                          json=STREAM,
                          headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert asked == [True]
    assert upstream.hung_up.wait(3)  # the request was closed, not left generating
    assert not CreditHold.objects.exists()
    assert not UsageRecord.objects.exists()
    user.credit_account.refresh_from_db()
    assert user.credit_account.balance_micros == 5_000_000
    assert_books_balance(user.pk)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "answer"])
def test_a_client_that_leaves_while_its_call_starts_leaves_nothing_held_or_claimed(
        live_server, upstream, routed, make_user, fund, monkeypatch, stream):
    user, secret = _customer(make_user, fund, usd=5)
    upstream.delay = 0.1  # still streaming when the start is undone
    _on_hold_write(monkeypatch, lambda: time.sleep(0.6))  # the client gives up meanwhile
    headers = {"Authorization": f"Bearer {secret}"}
    if not stream:  # a stream takes no Idempotency-Key
        headers["Idempotency-Key"] = "start-once"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live_server.url}/v1/chat/completions", json={**STREAM, "stream": stream},
                   headers=headers, timeout=httpx.Timeout(5, read=0.2))

    # Before: the hold stayed active (and the key claimed) until the stale-hold sweep.
    assert wait_for(lambda: UsageRecord.objects.exists() and not CreditHold.objects.filter(
        status=HoldStatus.ACTIVE).exists())
    record = UsageRecord.objects.get()
    assert (record.status, record.cost_micros) == (UsageStatus.CLIENT_DISCONNECTED, 0)
    account = user.credit_account
    account.refresh_from_db()
    assert (account.balance_micros, account.held_micros) == (5_000_000, 0)
    if stream:
        assert upstream.hung_up.wait(3)  # its upstream, asked early, was closed
    monkeypatch.undo()
    retried = httpx.post(f"{live_server.url}/v1/chat/completions", timeout=10,
                         json={**STREAM, "stream": stream}, headers=headers)
    assert retried.status_code == 200  # the key was not left claimed by the abandoned start
    assert_books_balance(user.pk)


def test_a_client_that_leaves_before_the_first_token_read_ahead_is_charged_nothing(
        live_server, upstream, routed, make_user, fund):
    user, secret = _customer(make_user, fund, usd=5)
    upstream.first_delay = 1.0  # the hold commits long before the upstream's first token
    with pytest.raises(httpx.ReadTimeout), httpx.Client(
            timeout=httpx.Timeout(5, read=0.3)) as client, client.stream(
            "POST", f"{live_server.url}/v1/chat/completions", json=STREAM,
            headers={"Authorization": f"Bearer {secret}"}) as response:
        response.read()

    assert wait_for(lambda: UsageRecord.objects.exists() and not CreditHold.objects.filter(
        status=HoldStatus.ACTIVE).exists())
    record = UsageRecord.objects.get()
    assert (record.status, record.cost_micros) == (UsageStatus.CLIENT_DISCONNECTED, 0)
    assert upstream.hung_up.wait(3)
    assert_books_balance(user.pk)


def test_an_upstream_that_refuses_while_the_hold_commits_is_an_http_error_and_charges_nothing(
        live_server, upstream, routed, make_user, fund, caplog):
    user, secret = _customer(make_user, fund, usd=5)
    upstream.refuse = True
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=STREAM, timeout=10,
                          headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 502  # before any byte of the stream: still a status
    assert "503" in response.json()["error"]["message"]
    record = UsageRecord.objects.get()
    assert (record.status, record.cost_micros) == (UsageStatus.UPSTREAM_ERROR, 0)
    assert not CreditHold.objects.filter(status=HoldStatus.ACTIVE).exists()
    gc.collect()
    assert "never retrieved" not in caplog.text
    assert_books_balance(user.pk)


def test_a_client_that_leaves_an_answer_being_generated_may_retry_its_idempotency_key_at_once(
        live_server, upstream, routed, make_user, fund):
    user, secret = _customer(make_user, fund, usd=5)
    upstream.first_delay = 1.0  # the answer takes a second: the client gives up before
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "retry-me"}
    answer = {**STREAM, "stream": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live_server.url}/v1/chat/completions", json=answer, headers=headers,
                   timeout=httpx.Timeout(5, read=0.3))

    # Settled as the client's leaving (an answer not delivered is not charged), key freed.
    assert wait_for(lambda: UsageRecord.objects.exists()
                    and not IdempotentRequest.objects.exists())
    record = UsageRecord.objects.get()
    assert (record.status, record.cost_micros) == (UsageStatus.CLIENT_DISCONNECTED, 0)
    upstream.first_delay = 0
    retried = httpx.post(f"{live_server.url}/v1/chat/completions", json=answer,
                         headers=headers, timeout=10)
    # Before: 409 "still being processed" until the stale-hold age (15 minutes).
    assert retried.status_code == 200
    charged = UsageRecord.objects.get(status=UsageStatus.SUCCEEDED)
    assert retried.headers["X-Credits-Charged"] == format_usd(charged.cost_micros)
    assert_books_balance(user.pk)
