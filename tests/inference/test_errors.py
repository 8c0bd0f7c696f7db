"""Every error under /v1 and /api comes in OpenAI's envelope, never as a 500 or HTML."""

import pytest
from django.core.cache import caches
from django.utils import timezone

from accounts.services import create_api_key, revoke_api_key
from inference.models import AiModel, UsageRecord

CHAT = "/v1/chat/completions"


def _chat(**extra) -> dict:
    return {"model": "demo-small", "messages": [{"role": "user", "content": "Hi"}], **extra}


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return error


@pytest.mark.django_db
def test_missing_invalid_and_revoked_keys_are_401(client, user, client_for):
    error = _error(client.post(CHAT, _chat(), content_type="application/json"), 401)
    assert error["code"] == "missing_api_key"
    assert _error(client_for("sk-not-a-real-key").post(CHAT, _chat(), format="json"),
                  401)["code"] == "invalid_api_key"
    key, secret = create_api_key(user=user, name="soon revoked")
    revoke_api_key(api_key=key, user=user)
    response = client_for(secret).get("/v1/models")
    assert _error(response, 401)["type"] == "authentication_error"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "demo-small"}, "messages"),
        (_chat(messages=[]), "messages"),
        (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (_chat(max_tokens=0), "max_tokens"),
        (_chat(max_tokens="many"), "max_tokens"),
        (_chat(max_tokens=5000), "max_tokens"),  # demo-small produces at most 4096
        (_chat(stream="sometimes"), "stream"),
        (_chat(temperature=7), "temperature"),
        (_chat(n=3), "n"),
        (["not", "an", "object"], None),
    ],
)
def test_invalid_requests_are_400_naming_the_parameter(api, body, param):
    error = _error(api.post(CHAT, body, format="json"), 400)
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


@pytest.mark.django_db
def test_bad_json_is_400(api):
    error = _error(api.post(CHAT, "{not json", content_type="application/json"), 400)
    assert error["code"] == "invalid_json"


@pytest.mark.django_db
def test_unknown_inactive_and_unpriced_models_are_404(api, user, fund):
    fund(user, 1)
    assert _error(api.post(CHAT, _chat(model="gpt-9"), format="json"), 404)["param"] == "model"
    AiModel.objects.filter(pk="demo-medium").update(active=False)
    _error(api.post(CHAT, _chat(model="demo-medium"), format="json"), 404)
    AiModel.objects.create(id="no-price", backend="demo")
    error = _error(api.post(CHAT, _chat(model="no-price"), format="json"), 404)
    assert error["code"] == "model_not_priced"
    assert "no-price" not in api.get("/v1/models").json()["data"]


@pytest.mark.django_db
def test_unknown_urls_and_wrong_methods_answer_json(api, client):
    assert _error(api.get("/v1/engines"), 404)["code"] == "not_found"
    assert _error(client.get("/api/nothing/here"), 404)["code"] == "not_found"
    assert _error(api.get(CHAT), 405)["code"] == "method_not_allowed"
    assert _error(api.delete("/v1/models"), 405)


@pytest.mark.django_db
def test_rate_limit_per_key_is_429_with_retry_after(api, user, fund, settings, client_for):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 2
    fund(user, 1)
    assert api.post(CHAT, _chat(), format="json").status_code == 200
    assert api.post(CHAT, _chat(), format="json").status_code == 200
    response = api.post(CHAT, _chat(), format="json")
    error = _error(response, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert 1 <= int(response["Retry-After"]) <= 60
    # Another key of the same user has its own allowance.
    other = client_for(create_api_key(user=user, name="second")[1])
    assert other.post(CHAT, _chat(), format="json").status_code == 200
    assert UsageRecord.objects.count() == 3


@pytest.mark.django_db
def test_rate_limiter_fails_open_when_the_cache_is_down(api, user, fund, settings, caplog):
    fund(user, 1)
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 1
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens there
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    }}
    import accounts.throttles

    accounts.throttles._last_warning = 0.0
    with caplog.at_level("WARNING", logger="accounts.throttles"):
        assert api.post(CHAT, _chat(), format="json").status_code == 200
        assert api.post(CHAT, _chat(), format="json").status_code == 200
    assert "Rate limiting is off" in caplog.text
    caches["default"].close()


@pytest.mark.django_db
def test_session_calls_need_the_csrf_token(user, fund):
    from django.test import Client

    user.first_token_at = timezone.now()
    user.save()
    fund(user, 1)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.get("/api/credits").status_code == 200
    refused = browser.post(CHAT, _chat(), content_type="application/json")
    assert _error(refused, 403)["type"] == "permission_error"
    browser.get("/api/credits")  # any page would do; we need the cookie
    from django.middleware.csrf import _get_new_csrf_string

    token = _get_new_csrf_string()
    browser.cookies["csrftoken"] = token
    ok = browser.post(CHAT, _chat(), content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert ok.status_code == 200
    assert UsageRecord.objects.get().api_key is None


@pytest.mark.django_db
def test_openapi_schema_and_docs_page_are_served(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/api/inference",
            "/api/auth/register", "/api/credits"} <= set(paths)
    assert client.get("/api/docs/").status_code == 200


@pytest.mark.django_db
def test_oversized_body_is_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    error = _error(api.post(CHAT, _chat(messages=[{"role": "user", "content": "x" * 5000}]),
                            format="json"), 413)
    assert error["code"] == "request_too_large"


@pytest.mark.django_db
def test_form_encoded_body_is_415(api):
    assert _error(api.post(CHAT, {"model": "demo-small"}), 415)


def test_a_client_that_accepts_only_event_streams_still_gets_its_stream(api):
    response = api.post(CHAT, {"model": "demo-small", "stream": True, "max_tokens": 5,
                               "messages": [{"role": "user", "content": "hi"}]},
                        format="json", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200
    assert b"data: [DONE]" in b"".join(response.streaming_content)
