"""The official `openai` package against the running app (pytest-django's live_server)."""

import openai
import pytest
from django.utils import timezone

from accounts.services import create_api_key, register_user
from credits.money import format_usd
from inference.models import UsageRecord
from tests.books import assert_books_balance

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is a ledger?"}]


@pytest.fixture
def customer(make_user, fund, demo_models):
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    fund(user, 5)
    return user, create_api_key(user=user, name="sdk")[1]


def test_sdk_lists_models_with_prices(sdk, customer):
    models = sdk(customer[1]).models.list()
    ids = [m.id for m in models.data]
    assert ids == ["demo-embed", "demo-large", "demo-medium", "demo-small"]
    pricing = models.data[3].model_extra["pricing"]
    assert pricing["output_per_million"] == pricing["reasoning_per_million"] == "0.600000"
    assert pricing["cached_input_per_million"] == pricing["input_per_million"] == "0.150000"


def test_sdk_chat_completion_plain_and_streamed_agree_and_both_are_billed(sdk, customer):
    user, secret = customer
    client = sdk(secret)
    completion = client.chat.completions.create(model="demo-small", messages=MESSAGES,
                                                max_tokens=100)
    text = completion.choices[0].message.content
    assert text.startswith("Demo reply: What is a ledger?")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 12
    record = UsageRecord.objects.get(request_id=completion.id)
    assert completion.usage.model_extra["cost"] == format_usd(record.cost_micros)

    stream = client.chat.completions.create(model="demo-small", messages=MESSAGES,
                                            max_tokens=100, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert UsageRecord.objects.filter(user=user, streamed=True, status="SUCCEEDED").count() == 1
    user.refresh_from_db()
    assert user.credit_balance == 5_000_000 - 2 * record.cost_micros
    assert_books_balance(user.pk)


def test_sdk_text_completion(sdk, customer):
    completion = sdk(customer[1]).completions.create(model="demo-medium", prompt="Say hi",
                                                     max_tokens=5)
    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"


def test_sdk_raises_authentication_error_on_a_bad_key(sdk, customer):
    with pytest.raises(openai.AuthenticationError) as exc:
        sdk("sk-wrong").models.list()
    assert exc.value.status_code == 401
    assert exc.value.code == "invalid_api_key"


def test_sdk_surfaces_402_as_an_api_error(sdk, demo_models):
    user, _key, secret = register_user(email="broke@example.com", password="a-long-passphrase-42")
    type(user).objects.filter(pk=user.pk).update(promotion_eligible=False)
    with pytest.raises(openai.APIStatusError) as exc:
        sdk(secret).chat.completions.create(model="demo-small", messages=MESSAGES, max_tokens=10)
    assert exc.value.status_code == 402
    assert "completion tokens" in exc.value.message
    assert exc.value.body["type"] == "insufficient_credits"


def test_sdk_unknown_model_is_not_found(sdk, customer):
    with pytest.raises(openai.NotFoundError):
        sdk(customer[1]).chat.completions.create(model="nope", messages=MESSAGES)
