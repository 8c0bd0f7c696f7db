"""Issue 14 over real HTTP (httpx against the live ASGI server): every answer under /v1 and /api
is JSON in OpenAI's envelope with an X-Request-Id (unknown paths and wrong methods included, and
never Django's HTML CSRF page for a bearer client), and request fields typed wrong are a 400
naming the parameter, as OpenAI's are: nothing is held or charged."""

import httpx
import pytest
from django.utils import timezone

from accounts.services import create_api_key
from credits.models import LedgerEntry
from inference.models import UsageRecord

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.fixture
def customer(make_user, fund, demo_models):
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    fund(user, 5)
    return user, create_api_key(user=user, name="k")[1]


@pytest.fixture
def http(live_server, customer):
    with httpx.Client(base_url=live_server.url, timeout=30,
                      headers={"Authorization": f"Bearer {customer[1]}"}) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text[:200]
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET"])
@pytest.mark.parametrize("path", ["/v1/chat/completion", "/v1/engines/x/completions",
                                  "/api/nothing", "/v1", "/api/keys/abc"])
def test_unknown_paths_are_json_404_for_every_method_never_the_csrf_page(http, method, path):
    response = http.request(method, path, json={"model": "demo-small"})
    error = _error(response, 404)
    assert error["code"] == "not_found"
    assert path in error["message"]


def test_the_typo_of_a_bearer_client_is_a_404_without_any_key_too(live_server, demo_models):
    # No key, no cookie, no CSRF token: still the envelope, not an HTML 403.
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        _error(client.post("/v1/chat/completion", json={}), 404)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", CHAT), ("PUT", "/v1/completions"), ("DELETE", "/v1/models"),
    ("PATCH", "/api/keys"), ("GET", "/api/auth/register"), ("POST", "/api/credits"),
    ("GET", "/v1/embeddings"), ("POST", "/api/schema/"),
])
def test_wrong_methods_are_json_405(http, method, path):
    response = http.request(method, path, json={})
    assert _error(response, 405)["code"] == "method_not_allowed"


def test_bearer_posts_to_embeddings_pass_the_csrf_check(http):
    response = http.post("/v1/embeddings", json={"model": "demo-embed", "input": "hi"})
    assert response.status_code != 403, response.text
    assert response.headers["content-type"].startswith("application/json")


def test_401s_carry_a_request_id(live_server, demo_models):
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        missing = client.post(CHAT, json={"model": "demo-small", "messages": MESSAGES})
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer sk-nope"})
    assert _error(missing, 401)["code"] == "missing_api_key"
    assert _error(wrong, 401)["code"] == "invalid_api_key"
    assert missing.headers["x-request-id"] != wrong.headers["x-request-id"]


def test_reads_carry_a_request_id_and_calls_keep_their_own(http):
    assert http.get("/v1/models").headers["x-request-id"].startswith("req-")
    call = http.post(CHAT, json={"model": "demo-small", "max_tokens": 3, "messages": MESSAGES})
    assert call.status_code == 200
    assert call.headers["x-request-id"] == call.json()["id"]


@pytest.mark.parametrize(("path", "body", "param", "expected"), [
    (CHAT, {"max_tokens": "5"}, "max_tokens", "expected an integer, but got a string"),
    (CHAT, {"max_tokens": 5.0}, "max_tokens", "expected an integer, but got a decimal number"),
    (CHAT, {"max_tokens": True}, "max_tokens", "expected an integer, but got a boolean"),
    (CHAT, {"stream": "yes"}, "stream", "expected a boolean, but got a string"),
    (CHAT, {"stream": 1}, "stream", "expected a boolean, but got an integer"),
    (CHAT, {"temperature": "0.5"}, "temperature", "expected a number, but got a string"),
    (CHAT, {"top_p": False}, "top_p", "expected a number, but got a boolean"),
    (CHAT, {"n": "1"}, "n", "expected an integer, but got a string"),
    (CHAT, {"seed": 1.5}, "seed", "expected an integer"),
    (CHAT, {"model": 7}, "model", "expected a string, but got an integer"),
    (CHAT, {"user": ["me"]}, "user", "expected a string, but got an array"),
    (CHAT, {"stream_options": {"include_usage": "true"}}, "stream_options.include_usage",
     "expected a boolean"),
    (CHAT, {"messages": [{"role": "user", "content": "x", "name": 5}]}, "messages.0.name",
     "expected a string"),
    (CHAT, {"parallel_tool_calls": 0}, "parallel_tool_calls", "expected a boolean"),
    (CHAT, {"tools": WEATHER, "tool_choice": "always"}, "tool_choice",
     "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or an object; "
     "got 'always'"),
    (CHAT, {"tools": WEATHER, "tool_choice": 1}, "tool_choice", "or an object with a type"),
    (CHAT, {"tools": WEATHER, "tool_choice": {"type": "function"}}, "tool_choice",
     "a function choice names its function"),
    (CHAT, {"tool_choice": "required"}, "tool_choice",
     "'tool_choice' is only allowed when 'tools' are specified"),
    (CHAT, {"tools": WEATHER, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "the function 'nope' is not among the tools"),
    (CHAT, {"logprobs": "true"}, "logprobs", "expected a boolean"),
    (CHAT, {"max_completion_tokens": "9"}, "max_completion_tokens", "expected an integer"),
    ("/v1/completions", {"prompt": 123}, "prompt", "prompt must be a string"),
    ("/v1/completions", {"prompt": "x", "echo": 1}, "echo", "expected a boolean"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, "max_tokens", "expected an integer"),
    ("/api/inference", {"prompt": 123}, "prompt", "expected a string, but got an integer"),
    ("/v1/embeddings", {"input": "x", "dimensions": "8"}, "dimensions", "expected an integer"),
    ("/v1/embeddings", {"input": "x", "encoding_format": 1}, "encoding_format",
     "expected a string"),
])
def test_wrong_types_are_400_naming_the_parameter_and_charge_nothing(http, customer, path, body,
                                                                      param, expected):
    user, _ = customer
    entries = LedgerEntry.objects.filter(user=user).count()
    defaults = {"model": "demo-embed" if "embeddings" in path else "demo-small"}
    if path == CHAT:
        defaults["messages"] = MESSAGES
    elif "embeddings" not in path:
        defaults["prompt"] = "Hi"
    error = _error(http.post(path, json={**defaults, **body}), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert expected in error["message"]
    assert LedgerEntry.objects.filter(user=user).count() == entries
    assert not UsageRecord.objects.exists()


def test_right_types_and_unknown_fields_still_pass(http):
    response = http.post(CHAT, json={
        "model": "demo-small", "messages": MESSAGES, "max_tokens": 4, "temperature": 1,
        "top_p": 0.5, "stream": False, "seed": 3, "user": "u-1", "some_future_field": {"x": 1}})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4


def test_api_key_names_and_sign_up_fields_are_strict_too(http, live_server):
    assert _error(http.post("/api/keys", json={"name": 5}), 400)["param"] == "name"
    with httpx.Client(base_url=live_server.url, timeout=30) as anonymous:
        response = anonymous.post("/api/auth/register",
                                  json={"email": "a@example.com", "password": 12345678901234})
    assert _error(response, 400)["param"] == "password"


@pytest.mark.parametrize("ask", [
    {"tool_choice": None},
    {"tool_choice": "none"},
    {"tool_choice": "auto"},
    {"tools": [{"type": "custom", "custom": {"name": "grep"}}],
     "tool_choice": {"type": "custom", "custom": {"name": "grep"}}},
    {"tools": WEATHER, "tool_choice": "required"},
    {"tools": WEATHER, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
], ids=["null", "none_without_tools", "auto_without_tools", "custom_tool", "required",
        "named_function"])
def test_tool_choices_openai_accepts_are_accepted(ask):
    from inference.serializers import ChatCompletionRequestSerializer, validated_request

    data = validated_request(ChatCompletionRequestSerializer,
                             {"model": "any", "messages": MESSAGES, **ask})
    assert data.get("tool_choice") == ask["tool_choice"]
