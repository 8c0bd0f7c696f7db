"""Simultaneous calls on PostgreSQL: one promotion, never overspent; a real hang-up."""

import threading
import time

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from accounts.models import User
from accounts.services import create_api_key, register_user
from credits.models import CreditGrant, CreditHold, GrantKind, HoldStatus
from credits.money import cost_micros
from credits.services import add_credit
from inference import services
from inference.backends import Prompt
from inference.exceptions import InferenceError, InsufficientCreditsForCall
from inference.models import UsageRecord, UsageStatus

pytestmark = [pytest.mark.postgres]


def _fire(user_id: int, bodies: list[dict]) -> list[object]:
    """Run every call at once through the billing flow, one thread (and one database
    connection) each, released together by a barrier. Returns the text or the error.

    (Threads call the service the views call: live_server's listen backlog of a few
    connections resets a burst of 30 simultaneous HTTP connections.)"""
    barrier = threading.Barrier(len(bodies))
    results: list = [None] * len(bodies)

    def run(index: int) -> None:
        body = bodies[index]
        try:
            user = User.objects.get(pk=user_id)
            barrier.wait()
            call = services.start_call(
                user=user, api_key=None, model_id=body["model"],
                prompt=Prompt(kind="chat", messages=body["messages"]),
                max_tokens=body["max_tokens"], endpoint="chat.completions")
            results[index] = "".join(call.tokens())
        except InferenceError as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _body(text: str, model: str = "demo-small", max_tokens: int = 20) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens}


def test_thirty_simultaneous_first_calls_earn_exactly_one_promotion(demo_models):
    user, _key, _secret = register_user(email="rush@example.com",
                                        password="a-long-passphrase-42")
    results = _fire(user.pk, [_body(f"question {i}") for i in range(30)])
    assert all(isinstance(r, str) and r for r in results), results
    assert CreditGrant.objects.filter(user=user, kind=GrantKind.PROMOTIONAL).count() == 1
    records = UsageRecord.objects.filter(user=user)
    assert records.count() == 30
    assert records.filter(promotion_applied=True).count() == 1
    assert not CreditHold.objects.filter(user=user, status=HoldStatus.ACTIVE).exists()
    user.refresh_from_db()
    assert user.credit_balance == 20_000_000 - sum(r.cost_micros for r in records)
    call_command("credits_verify")  # raises CommandError on any mismatch


def test_simultaneous_calls_on_a_small_balance_never_overspend(demo_models, make_user):
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    add_credit(user=user, amount_micros=1_000, kind=GrantKind.PURCHASED, description="tiny")
    # demo-large, max 20 tokens: the worst case of each call is about a fifth of the balance.
    worst = cost_micros(input_tokens=5, output_tokens=20, input_price_per_million_micros=2_500_000,
                        output_price_per_million_micros=10_000_000)
    assert 4 * worst <= 1_000 < 5 * worst + 1
    results = _fire(user.pk, [_body(f"q{i}", model="demo-large") for i in range(20)])
    served = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, InsufficientCreditsForCall)]
    assert served and refused and len(served) + len(refused) == 20
    user.refresh_from_db()
    charged = sum(UsageRecord.objects.filter(user=user).values_list("cost_micros", flat=True))
    assert UsageRecord.objects.filter(user=user).count() == len(served)
    assert charged <= 1_000 and user.credit_balance == 1_000 - charged >= 0
    assert user.credit_held == 0
    call_command("credits_verify")


def test_client_hanging_up_mid_stream_is_charged_for_what_was_produced(
        live_server, demo_models, make_user, fund, settings):
    settings.DEMO_BACKEND_TOKEN_DELAY_MS = 30
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    fund(user, 1)
    secret = create_api_key(user=user, name="k")[1]
    body = {**_body("Tell me everything about ledgers", max_tokens=400), "stream": True}
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{live_server.url}/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {secret}"}) as response:
        assert response.status_code == 200
        request_id = response.headers["X-Request-Id"]
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line]
    assert len(received) == 3  # the role chunk and two tokens, then we hang up
    record = None
    for _ in range(100):  # the server notices on its next write
        record = UsageRecord.objects.filter(request_id=request_id).first()
        if record:
            break
        time.sleep(0.1)
    assert record is not None and record.status == UsageStatus.CLIENT_DISCONNECTED
    # Charged for what was produced before the server noticed: at least what we read,
    # never the whole 400 (how many more depends on the machine's speed, so no tighter bound).
    assert 2 <= record.completion_tokens < 400
    assert record.cost_micros == cost_micros(
        input_tokens=record.prompt_tokens, output_tokens=record.completion_tokens,
        input_price_per_million_micros=150_000, output_price_per_million_micros=600_000)
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (1_000_000 - record.cost_micros, 0)
    call_command("credits_verify")
