"""Metering a call through the API: hold, first token and promotion, settlement."""

import datetime as dt

import pytest
from django.utils import timezone

from accounts.models import User
from accounts.services import register_user
from credits.models import CreditGrant, CreditHold, GrantKind, HoldStatus
from credits.money import cost_micros, format_usd
from inference import services
from inference.backends import Prompt
from inference.exceptions import PromotionNotGranted
from inference.models import AiModel, ModelPrice, UsageRecord, UsageStatus
from tests.books import assert_books_balance
from tests.waiting import wait_for

CHAT = "/v1/chat/completions"


def _chat(model="demo-small", text="Hello there, world!", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def _price(model_id="demo-small") -> ModelPrice:
    return AiModel.objects.get(pk=model_id).price_at()


@pytest.mark.django_db
def test_call_is_charged_its_actual_cost_and_headers_show_balance_and_charge(
        api, user, fund):
    user.first_token_at = timezone.now()
    user.promotion_eligible = False
    user.save()
    fund(user, 1)
    response = api.post(CHAT, _chat(max_tokens=200), format="json")
    assert response.status_code == 200
    usage = response.json()["usage"]
    price = _price()
    expected = cost_micros(
        input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"],
        input_price_per_million_micros=price.input_price_per_million_micros,
        output_price_per_million_micros=price.output_price_per_million_micros)
    assert usage["cost"] == format_usd(expected)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response["X-Credits-Charged"] == format_usd(expected)
    assert response["X-Credits-Balance"] == format_usd(1_000_000 - expected)
    assert response["X-Request-Id"] == response.json()["id"]
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (1_000_000 - expected, 0)
    record = UsageRecord.objects.get(request_id=response.json()["id"])
    assert record.status == UsageStatus.SUCCEEDED
    assert record.cost_micros == expected
    assert record.input_price_per_million_micros == price.input_price_per_million_micros
    assert CreditHold.objects.get(pk=record.hold_id).status == HoldStatus.CAPTURED
    assert_books_balance(user.pk)


@pytest.mark.django_db
def test_new_price_applies_to_later_calls_and_records_keep_the_old_one(api, spender, fund,
                                                                       client_for):
    from accounts.services import create_api_key

    fund(spender, 1)
    client = client_for(create_api_key(user=spender, name="k")[1])
    first = client.post(CHAT, _chat(), format="json").json()
    ModelPrice.objects.create(model_id="demo-small", input_price_per_million_micros=9_000_000,
                              output_price_per_million_micros=9_000_000)
    second = client.post(CHAT, _chat(), format="json").json()
    old, new = (UsageRecord.objects.get(request_id=r["id"]) for r in (first, second))
    assert old.input_price_per_million_micros == 150_000
    assert new.input_price_per_million_micros == 9_000_000
    tokens = second["usage"]["total_tokens"]
    assert new.cost_micros == cost_micros(input_tokens=second["usage"]["prompt_tokens"],
                                          output_tokens=tokens - second["usage"]["prompt_tokens"],
                                          input_price_per_million_micros=9_000_000,
                                          output_price_per_million_micros=9_000_000)


@pytest.mark.django_db
def test_first_call_in_the_window_earns_the_promotion_and_is_paid_from_it(client_for):
    user, _key, secret = register_user(email="new@example.com", password="a-long-passphrase-42")
    response = client_for(secret).post(
        "/api/inference", {"model": "demo-small", "prompt": "Hi!", "max_tokens": 20},
        format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    charged = body["credits"]["charged"]
    assert body["credits"]["promotion"] == {"applied": True, "eligible": False,
                                            "seconds_remaining": 0.0}
    assert body["credits"]["balance"] == format_usd(20_000_000 - int(charged.replace(".", "")))
    promo = CreditGrant.objects.get(user=user, kind=GrantKind.PROMOTIONAL)
    assert promo.remaining_micros == 20_000_000 - int(charged.replace(".", ""))
    assert UsageRecord.objects.get(request_id=body["id"]).promotion_applied
    assert response["X-Promotion-Applied"] == "true"
    assert_books_balance(user.pk)


@pytest.mark.django_db
def test_first_call_after_the_window_with_no_balance_is_refused_with_402(client_for):
    user, _key, secret = register_user(email="late@example.com", password="a-long-passphrase-42")
    User.objects.filter(pk=user.pk).update(date_joined=timezone.now() - dt.timedelta(hours=1))
    response = client_for(secret).post(CHAT, _chat(max_tokens=20), format="json")
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert "enough for 0 completion tokens" in error["message"]
    user.refresh_from_db()
    assert (user.credit_balance, user.first_token_at) == (0, None)
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db
def test_call_held_on_the_pending_promotion_whose_first_token_is_late_ends_402_uncharged():
    user, key, _secret = register_user(email="edge@example.com", password="a-long-passphrase-42")
    call = services.start_call(user=user, api_key=key, model_id="demo-small",
                               prompt=Prompt(kind="completion", text="Hi"), max_tokens=10,
                               endpoint="completions")
    assert call.hold.pending_promotion_micros == call.hold.amount_micros
    # The window closes between the hold and the first token.
    User.objects.filter(pk=user.pk).update(date_joined=timezone.now() - dt.timedelta(hours=1))
    tokens = call.tokens()
    with pytest.raises(PromotionNotGranted):
        next(tokens)
    user.refresh_from_db()
    assert user.credit_balance == 0 and not user.promotion_claimed
    assert CreditHold.objects.get(pk=call.hold.pk).status == HoldStatus.RELEASED
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status, record.cost_micros, record.completion_tokens) == (
        UsageStatus.PROMOTION_NOT_GRANTED, 0, 0)
    assert_books_balance(user.pk)


@pytest.mark.django_db
def test_insufficient_balance_says_how_many_tokens_it_affords(api, user, fund):
    user.first_token_at = timezone.now()
    user.promotion_eligible = False
    user.save()
    fund(user, 1)
    user.refresh_from_db()
    # demo-large: $10 per million output tokens, so $1 buys ~100,000 tokens: ask for more.
    AiModel.objects.filter(pk="demo-large").update(max_output_tokens=200_000,
                                                   context_length=300_000)
    response = api.post(CHAT, _chat(model="demo-large", max_tokens=150_000), format="json")
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["type"] == "insufficient_credits"
    prompt_tokens = 7  # user : Hello there , world !
    affordable = (1_000_000 * 1_000_000 - prompt_tokens * 2_500_000) // 10_000_000
    assert error["affordable_tokens"] == affordable
    assert f"enough for {affordable} completion tokens" in error["message"]
    assert user.credit_balance == 1_000_000 and not CreditHold.objects.exists()


def test_streaming_disconnect_charges_the_tokens_produced(spender, fund, live_server, settings):
    """A client that hangs up mid-stream (ASGI, as served): the server notices within a
    token, stops generating, and charges what it sent."""
    import httpx

    from accounts.services import create_api_key
    from tests.seeds import seed_demo_models

    seed_demo_models()
    settings.DEMO_BACKEND_TOKEN_DELAY_MS = 40  # slow enough to hang up in the middle
    fund(spender, 1)
    secret = create_api_key(user=spender, name="k")[1]
    with httpx.Client(base_url=live_server.url, timeout=30) as client, client.stream(
            "POST", CHAT, json=_chat(stream=True, max_tokens=200),
            headers={"Authorization": f"Bearer {secret}"}) as response:
        assert response.status_code == 200
        request_id = response.headers["X-Request-Id"]
        received = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append(line)
            if len(received) == 4:  # the role chunk and three tokens
                break
    assert '"role":"assistant"' in received[0]
    # The server settles once it notices the hang-up.
    assert wait_for(UsageRecord.objects.filter(request_id=request_id).exists)
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.status == UsageStatus.CLIENT_DISCONNECTED
    assert 3 <= record.completion_tokens <= 5  # what was sent: stopped within a token or so
    price = _price()
    expected = cost_micros(input_tokens=record.prompt_tokens, output_tokens=record.completion_tokens,
                           input_price_per_million_micros=price.input_price_per_million_micros,
                           output_price_per_million_micros=price.output_price_per_million_micros)
    assert record.cost_micros == expected
    spender.refresh_from_db()
    assert (spender.credit_balance, spender.credit_held) == (1_000_000 - expected, 0)
    assert_books_balance(spender.pk)


@pytest.mark.django_db
def test_streamed_call_ends_with_usage_and_credits_then_done(api, spender, fund, client_for):
    from accounts.services import create_api_key

    fund(spender, 1)
    client = client_for(create_api_key(user=spender, name="k")[1])
    response = client.post(CHAT, _chat(stream=True, stream_options={"include_usage": True}),
                           format="json")
    events = b"".join(response.streaming_content).decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    import json

    usage_chunk = json.loads(events[-2][len("data: "):])
    assert usage_chunk["choices"] == []
    record = UsageRecord.objects.get(request_id=usage_chunk["id"])
    assert usage_chunk["usage"]["cost"] == format_usd(record.cost_micros)
    assert usage_chunk["credits"]["balance"] == format_usd(1_000_000 - record.cost_micros)
    assert record.streamed and record.status == UsageStatus.SUCCEEDED
    assert response["X-Credits-Held"] == format_usd(record.held_micros)
    assert response["X-Credits-Charged"] == "0.000000"  # headers leave before generation


@pytest.mark.django_db
def test_a_started_call_knows_the_balance_its_hold_left_after_expiring_lapsed_credit(
        spender, fund, django_assert_num_queries):
    """A stream's headers show the balance before generation. The hold expires lapsed credit
    under the account's lock, and the balance it leaves is the one shown, with no further
    query of the account."""
    long_ago = timezone.now() - dt.timedelta(days=40)
    fund(spender, 3, now=long_ago, expires_at=long_ago + dt.timedelta(days=30))  # lapsed
    fund(spender, 1)
    spender.refresh_from_db()
    assert spender.credit_balance == 4_000_000  # the lapsed $3 is not expired yet
    call = services.start_call(user=spender, api_key=None, model_id="demo-small",
                               prompt=Prompt(kind="completion", text="Hi"), max_tokens=10,
                               endpoint="completions", streamed=True)
    with django_assert_num_queries(0):
        assert call.balance_micros() == 1_000_000
    spender.refresh_from_db()
    assert (spender.credit_balance, spender.credit_held) == (1_000_000, call.held_micros)
    assert_books_balance(spender.pk)


@pytest.mark.django_db
def test_upstream_failure_before_the_first_token_releases_the_hold(api, spender, fund,
                                                                   client_for, upstream):
    from accounts.services import create_api_key

    fund(spender, 1)
    client = client_for(create_api_key(user=spender, name="k")[1])
    upstream.mode = "http_500"
    response = client.post(CHAT, _chat(model="upstream-tiny", stream=True), format="json")
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert "model crashed" in response.json()["error"]["message"]
    upstream.mode = "slow"
    response = client.post(CHAT, _chat(model="upstream-tiny"), format="json")
    assert response.status_code == 504
    spender.refresh_from_db()
    assert (spender.credit_balance, spender.credit_held) == (1_000_000, 0)
    assert set(UsageRecord.objects.values_list("status", "cost_micros")) == {
        (UsageStatus.UPSTREAM_ERROR, 0)}
    assert_books_balance(spender.pk)


@pytest.mark.django_db
def test_upstream_failure_mid_stream_sends_an_error_event_and_charges_what_was_sent(
        api, spender, fund, client_for, upstream):
    from accounts.services import create_api_key

    fund(spender, 1)
    client = client_for(create_api_key(user=spender, name="k")[1])
    upstream.mode = "die_after_two"
    response = client.post(CHAT, _chat(model="upstream-tiny", stream=True), format="json")
    assert response.status_code == 200
    events = b"".join(response.streaming_content).decode().strip().split("\n\n")
    assert '"error"' in events[-1] and "closed the stream early" in events[-1]
    assert "[DONE]" not in events[-1]
    record = UsageRecord.objects.get()
    assert record.status == UsageStatus.UPSTREAM_ERROR
    # "Hello" + " from" delivered: 2 tokens by our counting rule, at $2 per million.
    assert record.completion_tokens == 2
    assert record.cost_micros == cost_micros(
        input_tokens=record.prompt_tokens, output_tokens=2,
        input_price_per_million_micros=1_000_000, output_price_per_million_micros=2_000_000)
    assert_books_balance(spender.pk)


@pytest.mark.django_db
def test_upstream_usage_is_what_gets_charged(api, spender, fund, client_for, upstream):
    from accounts.services import create_api_key

    fund(spender, 1)
    client = client_for(create_api_key(user=spender, name="k")[1])
    body = client.post(CHAT, _chat(model="upstream-tiny", max_tokens=50), format="json").json()
    assert body["choices"][0]["message"]["content"] == "Hello from upstream!"
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (11, 5)
    assert body["usage"]["cost"] == format_usd(11 + 10)  # 11 x $1/M + 5 x $2/M


@pytest.mark.django_db
def test_idempotent_replay_returns_the_stored_response_and_charges_once(api, user, fund):
    fund(user, 1)
    headers = {"HTTP_IDEMPOTENCY_KEY": "retry-123"}
    first = api.post(CHAT, _chat(), format="json", **headers)
    again = api.post(CHAT, _chat(), format="json", **headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert again["X-Credits-Charged"] == first["X-Credits-Charged"]
    assert UsageRecord.objects.count() == 1
    different = api.post(CHAT, _chat(text="Another question"), format="json", **headers)
    assert different.status_code == 409
    assert different.json()["error"]["code"] == "idempotency_key_reused"
    assert UsageRecord.objects.count() == 1


@pytest.mark.django_db
def test_failed_idempotent_call_can_be_retried_with_the_same_key(api, user, fund):
    user.first_token_at = timezone.now()
    user.promotion_eligible = False
    user.save()
    headers = {"HTTP_IDEMPOTENCY_KEY": "after-top-up"}
    assert api.post(CHAT, _chat(), format="json", **headers).status_code == 402
    fund(user, 1)
    assert api.post(CHAT, _chat(), format="json", **headers).status_code == 200


@pytest.mark.django_db
def test_billing_switched_off_generates_without_touching_the_books(api, user, settings):
    settings.INFERENCE_BILLING_ENABLED = False
    response = api.post(CHAT, _chat(), format="json")
    assert response.status_code == 200
    assert "X-Credits-Charged" not in response
    user.refresh_from_db()
    assert user.first_token_at is None and user.credit_balance == 0
    assert not UsageRecord.objects.exists() and not CreditHold.objects.exists()


@pytest.mark.django_db
def test_idempotency_key_of_a_call_that_died_unanswered_can_be_reused(api, user, fund):
    from inference.models import IdempotentRequest

    fund(user, 1)
    IdempotentRequest.objects.create(user=user, key="crashed", endpoint="chat.completions",
                                     body_hash="whatever",
                                     created_at=timezone.now() - dt.timedelta(hours=1))
    response = api.post(CHAT, _chat(), format="json", HTTP_IDEMPOTENCY_KEY="crashed")
    assert response.status_code == 200
    assert IdempotentRequest.objects.get(key="crashed").status_code == 200
