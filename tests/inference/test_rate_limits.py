"""Rate limits per API key (accounts.throttles): requests and tokens per minute, atomic in Redis,
OpenAI's x-ratelimit-* headers on every metered answer, a 429 with Retry-After over a limit.
Over real HTTP against the live ASGI server (the test settings use Redis: REDIS_URL)."""

import logging
import threading

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.cache import caches
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import create_api_key
from accounts.throttles import estimate_tokens, reset_text
from inference.models import UsageRecord

pytestmark = [pytest.mark.postgres]

CHAT = "/v1/chat/completions"
HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
           "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
           "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def _chat(**extra) -> dict:
    return {"model": "demo-small", "max_tokens": 5,
            "messages": [{"role": "user", "content": "Hi"}], **extra}


@pytest.fixture
def needs_redis():
    if not getattr(django_settings, "REDIS_URL", ""):
        pytest.skip("the atomic limiter needs Redis: set REDIS_URL")


@pytest.fixture
def customer(make_user, fund, demo_models, needs_redis):
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    fund(user, 50)
    key, secret = create_api_key(user=user, name="k")
    return user, key, secret


def _client(live_server, secret):
    return httpx.Client(base_url=live_server.url, timeout=60,
                        headers={"Authorization": f"Bearer {secret}"})


def test_150_simultaneous_calls_against_120_a_minute_admit_exactly_120(live_server, customer,
                                                                        settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 120
    user, _key, secret = customer
    barrier = threading.Barrier(150)
    responses: list = [None] * 150

    def call(i: int) -> None:
        with _client(live_server, secret) as client:
            barrier.wait()
            responses[i] = client.post(CHAT, json=_chat(messages=[
                {"role": "user", "content": f"question {i}"}]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(150)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 120, statuses
    assert statuses.count(429) == 30
    assert UsageRecord.objects.filter(user=user).count() == 120
    for refused in (r for r in responses if r.status_code == 429):
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "requests per minute" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses
                       if r.status_code == 200)
    assert remaining == list(range(120))  # each admitted call saw its own place in the count


def test_every_metered_answer_carries_openais_headers(live_server, customer, settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 10
    settings.RATE_LIMIT_TOKENS_PER_MINUTE = 5000
    with _client(live_server, customer[2]) as client:
        plain = client.post(CHAT, json=_chat())
        stream = client.post(CHAT, json=_chat(stream=True))
        invalid = client.post(CHAT, json=_chat(max_tokens="5"))
        completion = client.post("/v1/completions",
                                 json={"model": "demo-small", "prompt": "Hi", "max_tokens": 3})
    for response in (plain, stream, invalid, completion):
        assert set(HEADERS) <= set(response.headers), response.headers
        assert response.headers["x-ratelimit-limit-requests"] == "10"
        assert response.headers["x-ratelimit-limit-tokens"] == "5000"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    assert [r.headers["x-ratelimit-remaining-requests"] for r in
            (plain, stream, invalid, completion)] == ["9", "8", "7", "6"]


def test_tokens_are_reserved_then_corrected_to_the_real_usage(live_server, customer):
    _user, key, secret = customer
    ApiKey.objects.filter(pk=key.pk).update(rate_limit_tokens_per_minute=300,
                                            rate_limit_requests_per_minute=0)
    body = _chat(max_tokens=100)
    reserve = estimate_tokens(body)
    with _client(live_server, secret) as client:
        first = client.post(CHAT, json=body)
        assert first.status_code == 200, first.text
        assert "x-ratelimit-limit-requests" not in first.headers  # 0: no request limit
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 300 - reserve
        used = first.json()["usage"]["total_tokens"]
        assert used < reserve  # the demo model stops before max_tokens

        # The second sees the first's real usage, not its reservation.
        second = client.post(CHAT, json=body)
        assert second.status_code == 200, second.text
        assert int(second.headers["x-ratelimit-remaining-tokens"]) == 300 - used - reserve

        # A call refused before it ran (a 400) gives its whole reservation back.
        assert client.post(CHAT, json=_chat(max_tokens="100")).status_code == 400
        streamed = client.post(CHAT, json=_chat(max_tokens=10, stream=True,
                                                stream_options={"include_usage": True}))
        used_second = second.json()["usage"]["total_tokens"]
        assert int(streamed.headers["x-ratelimit-remaining-tokens"]) == (
            300 - used - used_second - estimate_tokens(_chat(max_tokens=10, stream=True,
                                                              stream_options={"include_usage": True})))
        last = [line for line in streamed.text.splitlines() if '"usage"' in line][-1]
        assert '"total_tokens"' in last

        # Over the limit: a 429 naming tokens, with the headers and Retry-After.
        refused = client.post(CHAT, json=_chat(max_tokens=250))
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "tokens per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-tokens"] == "300"


def test_a_call_larger_than_the_whole_limit_is_told_to_lower_max_tokens(live_server, customer):
    _user, key, secret = customer
    ApiKey.objects.filter(pk=key.pk).update(rate_limit_tokens_per_minute=50)
    with _client(live_server, secret) as client:
        refused = client.post(CHAT, json=_chat(max_tokens=1000))
    assert refused.status_code == 429
    assert "lower max_tokens" in refused.json()["error"]["message"]


def test_a_keys_override_beats_the_setting_and_other_keys_keep_theirs(live_server, customer,
                                                                       settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 100
    user, key, secret = customer
    ApiKey.objects.filter(pk=key.pk).update(rate_limit_requests_per_minute=2)
    other = create_api_key(user=user, name="other")[1]
    with _client(live_server, secret) as client:
        statuses = [client.post(CHAT, json=_chat()).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    with _client(live_server, other) as client:
        response = client.post(CHAT, json=_chat())
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"] == "100"


def test_the_override_is_edited_in_admin(client, customer, django_user_model):
    _user, key, _secret = customer
    admin = django_user_model.objects.create_superuser("root@tokenbank.test", "pw-long-enough-1")
    client.force_login(admin)
    url = f"/admin/accounts/apikey/{key.pk}/change/"
    assert client.get(url).status_code == 200
    response = client.post(url, {"rate_limit_requests_per_minute": "7",
                                 "rate_limit_tokens_per_minute": ""})
    assert response.status_code == 302, response.content[:2000]
    key.refresh_from_db()
    assert (key.rate_limit_requests_per_minute, key.rate_limit_tokens_per_minute) == (7, None)
    assert key.name == "k"  # everything else stays read-only


def test_redis_down_fails_open_with_one_warning(live_server, customer, settings, caplog):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 1
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens there
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    }}
    import accounts.throttles

    accounts.throttles._last_warning = 0.0
    with caplog.at_level(logging.WARNING, logger="accounts.throttles"), \
            _client(live_server, customer[2]) as client:
        statuses = [client.post(CHAT, json=_chat()).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    warnings = [r for r in caplog.records if r.name == "accounts.throttles"]
    assert len(warnings) == 1
    assert "Rate limiting is off" in warnings[0].getMessage()
    caches["default"].close()


@pytest.mark.parametrize(("ms", "text"), [(0, "0ms"), (20, "20ms"), (1000, "1s"),
                                          (1500, "1.5s"), (59_872, "59.872s"),
                                          (360_000, "6m0s"), (90_500, "1m30.5s")])
def test_reset_is_written_as_openai_writes_it(ms, text):
    assert reset_text(ms) == text
