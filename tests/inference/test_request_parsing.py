"""Bodies the JSON parser must refuse with a 400 in OpenAI's envelope, over real HTTP
(httpx against live_server), before anything is held or charged."""

import httpx
import pytest
from django.utils import timezone

from accounts.services import create_api_key
from credits.models import CreditHold, LedgerEntry
from inference.models import UsageRecord
from tests.books import USD

DEEP = "[" * 100_000 + "]" * 100_000
# Where each endpoint takes its text (a JSON fragment spliced into the body as is).
ENDPOINTS = {
    "/v1/chat/completions": '"messages": [{{"role": "user", "content": {text}}}]',
    "/v1/completions": '"prompt": {text}',
    "/api/inference": '"prompt": {text}',
}
HOSTILE = {
    "nested_100000_deep": DEEP,
    "lone_surrogate": r'"hi \ud800 there"',  # the JSON escape, not a character
}


@pytest.fixture
def customer(make_user, fund, demo_models):
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    fund(user, 5)
    return user, create_api_key(user=user, name="k")[1]


@pytest.mark.parametrize("path", list(ENDPOINTS))
@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_json_is_a_400_and_nothing_is_held_or_charged(live_server, customer, path, text):
    user, secret = customer
    entries = LedgerEntry.objects.filter(user=user).count()
    body = '{"model": "demo-small", "max_tokens": 5, ' + ENDPOINTS[path].format(text=text) + "}"
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        response = client.post(path, content=body.encode(), headers={
            "Authorization": f"Bearer {secret}", "Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")
    assert error["message"].startswith("We could not parse the JSON body of your request.")
    assert not CreditHold.objects.filter(user=user).exists()
    assert LedgerEntry.objects.filter(user=user).count() == entries
    assert not UsageRecord.objects.exists()
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (5 * USD, 0)


def test_a_valid_surrogate_pair_is_one_character_and_welcome(live_server, customer):
    # "\ud83d\ude00" is the escape of one emoji: only an unpaired half is refused.
    user, secret = customer
    body = r'{"model": "demo-small", "max_tokens": 5, "prompt": "smile \ud83d\ude00"}'
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        response = client.post("/api/inference", content=body.encode(), headers={
            "Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert UsageRecord.objects.get(user=user).cost_micros > 0
