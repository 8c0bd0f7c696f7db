"""Idempotency-Key replays over real HTTP (httpx against live_server): once a keyed call
is charged, the client gets the answer it paid for, and a retry never pays again."""

import datetime as dt

import httpx
import pytest
from django.db import DatabaseError
from django.utils import timezone

from accounts.services import create_api_key
from credits.models import EntryType, LedgerEntry
from inference.api import ChatCompletionsView
from inference.models import IdempotentRequest, UsageRecord
from tests.books import USD, assert_books_balance

CHAT = "/v1/chat/completions"


@pytest.fixture
def customer(make_user, fund, demo_models):
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    fund(user, 5)
    return user, create_api_key(user=user, name="k")[1]


@pytest.fixture
def post(live_server, customer):
    """post(body, key) -> httpx.Response, as the customer, with an Idempotency-Key."""
    secret = customer[1]

    def send(body: dict, key: str) -> httpx.Response:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            return client.post(CHAT, json=body, headers={"Authorization": f"Bearer {secret}",
                                                        "Idempotency-Key": key})

    return send


def _chat(text: str) -> dict:
    return {"model": "demo-small", "max_tokens": 20,
            "messages": [{"role": "user", "content": text}]}


def _charged_once(user) -> UsageRecord:
    """The books show exactly one charged call, and the balance paid for it once."""
    assert LedgerEntry.objects.filter(user=user, entry_type=EntryType.CAPTURE).count() == 1
    record = UsageRecord.objects.get(user=user)
    assert record.cost_micros > 0
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (5 * USD - record.cost_micros, 0)
    assert_books_balance(user.pk)
    return record


def test_a_nul_in_the_prompt_is_charged_once_and_replayed_with_the_same_answer(customer, post):
    # PostgreSQL's json/jsonb refuse "\u0000": storing the replay copy used to fail after
    # the charge, so each retry got a 500 and paid again.
    user, _ = customer
    responses = [post(_chat("nul\u0000here"), "nul-key") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    first = responses[0].json()
    assert "\x00" in first["choices"][0]["message"]["content"]  # the answer echoes the NUL
    assert [r.json() for r in responses[1:]] == [first, first]
    assert [r.headers.get("Idempotent-Replayed") for r in responses] == [None, "true", "true"]
    assert _charged_once(user).request_id == first["id"]


def test_when_the_replay_copy_cannot_be_stored_the_answer_still_goes_out_and_retries_are_refused(
        customer, post, monkeypatch):
    user, _ = customer
    save = IdempotentRequest.save

    def refuse_the_copy(self, *args, **kwargs):
        if self.response_json is not None:
            raise DatabaseError("disk full")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(IdempotentRequest, "save", refuse_the_copy)
    first = post(_chat("Hello"), "lost-copy")
    retries = [post(_chat("Hello"), "lost-copy") for _ in range(2)]

    assert first.status_code == 200
    assert first.json()["choices"][0]["message"]["content"].startswith("Demo reply")
    for retry in retries:
        assert retry.status_code == 409
        error = retry.json()["error"]
        assert error["code"] == "idempotency_response_unavailable"
        assert error["param"] == "Idempotency-Key"
        assert "charged" in error["message"]
    _charged_once(user)


def test_a_failure_after_the_charge_keeps_the_key_so_a_retry_does_not_pay_again(
        customer, post, monkeypatch):
    user, _ = customer

    def broken_render(self, call, data, created):
        raise RuntimeError("rendering bug")

    monkeypatch.setattr(ChatCompletionsView, "render", broken_render)
    first = post(_chat("Hello"), "render-bug")
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    monkeypatch.undo()

    retry = post(_chat("Hello"), "render-bug")
    assert retry.status_code == 409
    assert retry.json()["error"]["code"] == "idempotency_response_unavailable"
    _charged_once(user)


def test_a_charged_call_whose_key_was_never_settled_is_not_run_again_when_it_goes_stale(
        customer, post, monkeypatch, settings):
    # The database refused every write to the key (an outage right after the charge):
    # the key is left "in progress", and going stale must not make it free again.
    user, _ = customer

    def refuse(self, *args, **kwargs):
        if kwargs.get("update_fields"):
            raise DatabaseError("connection lost")
        return save(self, *args, **kwargs)

    save = IdempotentRequest.save
    monkeypatch.setattr(IdempotentRequest, "save", refuse)
    assert post(_chat("Hello"), "outage").status_code == 200
    monkeypatch.undo()
    assert IdempotentRequest.objects.get(key="outage").status_code is None

    in_progress = post(_chat("Hello"), "outage")
    assert in_progress.status_code == 409
    assert in_progress.json()["error"]["code"] == "idempotency_request_in_progress"
    IdempotentRequest.objects.filter(key="outage").update(
        created_at=timezone.now() - dt.timedelta(seconds=settings.STALE_HOLD_SECONDS + 1))
    stale = post(_chat("Hello"), "outage")
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "idempotency_response_unavailable"
    _charged_once(user)
