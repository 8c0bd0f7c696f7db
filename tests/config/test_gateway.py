"""The metered endpoints' lean path (config/gateway.py), on the live ASGI server: a call made
with an API key skips the pages' middleware but keeps what every answer owes (the Host check,
the security headers, the request id, the metrics); a browser call keeps the whole site, and
no header mix lets a session cookie in without its CSRF check."""

import httpx
import pytest

import config.asgi
from config.observability import metrics
from inference.models import UsageRecord
from tests.seeds import seed_demo_models
from tests.sessions import session_cookies

pytestmark = [pytest.mark.django_db(transaction=True)]

CALL = {"model": "demo-small", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hello there"}]}


class CountingApp:
    """An ASGI app that counts the requests it passes on."""

    def __init__(self, app):
        self.app, self.paths = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture
def paths_taken(monkeypatch):
    """Which requests went through the gateway handler and which through the site's."""
    gateway, site = CountingApp(config.asgi.gateway), CountingApp(config.asgi.site)
    monkeypatch.setattr(config.asgi, "gateway", gateway)
    monkeypatch.setattr(config.asgi, "site", site)
    return {"gateway": gateway.paths, "site": site.paths}


@pytest.fixture
def funded_key(make_user, fund, api_key_for):
    seed_demo_models()
    user = make_user(promotion_eligible=False)
    fund(user, 5)
    return user, api_key_for(user)


@pytest.fixture
def api_key_for():
    from accounts.services import create_api_key

    return lambda user: create_api_key(user=user, name="gateway")[1]


def requests_counted(status: str) -> float:
    return metrics.REQUESTS.labels("v1/chat/completions", "demo-small", status)._value.get()


def test_a_key_call_takes_the_gateway_and_keeps_the_headers_every_answer_owes(
        live_server, funded_key, paths_taken):
    _user, secret = funded_key
    counted = requests_counted("200")

    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=CALL,
                          headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 200, response.text
    assert paths_taken["gateway"] == ["/v1/chat/completions"]
    assert paths_taken["site"] == []
    body = response.json()
    assert response.headers["X-Request-Id"] == body["id"]
    assert UsageRecord.objects.get(request_id=body["id"]).cost_micros > 0
    # SecurityMiddleware's headers, as on every page.
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert requests_counted("200") == counted + 1  # /metrics counts it by URL pattern


def test_a_stream_on_the_gateway_ends_with_usage_and_done(live_server, funded_key, paths_taken):
    _user, secret = funded_key
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions",
                      json={**CALL, "stream": True, "stream_options": {"include_usage": True}},
                      headers={"Authorization": f"Bearer {secret}"}) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.status_code == 200
    assert paths_taken["gateway"] == ["/v1/chat/completions"]
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' in lines[-2] and '"charged"' in lines[-2]


def test_an_unknown_host_is_refused_on_the_gateway_as_on_the_site(
        live_server, funded_key, paths_taken):
    _user, secret = funded_key
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=CALL,
                          headers={"Authorization": f"Bearer {secret}",
                                   "Host": "attacker.example"})

    assert response.status_code == 400
    assert paths_taken["gateway"] == ["/v1/chat/completions"]
    assert not UsageRecord.objects.exists()


def test_a_bad_key_gets_the_json_401_with_a_request_id(live_server, paths_taken):
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=CALL,
                          headers={"Authorization": "Bearer tb-not-a-real-key"})

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["X-Request-Id"]
    assert paths_taken["gateway"] == ["/v1/chat/completions"]


def test_a_session_cookie_with_a_junk_authorization_header_is_not_let_in(
        live_server, funded_key, paths_taken):
    """The lean path has no session middleware: a cookie there authenticates nobody, so a
    page's session can never be used on it without the site's CSRF check."""
    user, _secret = funded_key
    response = httpx.post(f"{live_server.url}/api/inference",
                          json={"model": "demo-small", "prompt": "hi", "max_tokens": 4},
                          headers={"Authorization": "Basic anVuazpqdW5r"},
                          cookies=session_cookies(user))

    assert response.status_code == 401
    assert paths_taken["gateway"] == ["/api/inference"]
    assert not UsageRecord.objects.exists()


def test_a_browser_call_without_a_key_goes_through_the_site_and_its_csrf_check(
        live_server, funded_key, paths_taken):
    user, _secret = funded_key
    response = httpx.post(f"{live_server.url}/api/inference",
                          json={"model": "demo-small", "prompt": "hi", "max_tokens": 4},
                          cookies=session_cookies(user))

    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]
    assert paths_taken == {"gateway": [], "site": ["/api/inference"]}
    assert not UsageRecord.objects.exists()


def test_the_gateway_redirects_plain_http_to_https_as_the_site_does(settings):
    """SecurityMiddleware runs on the lean path too: with SECURE_SSL_REDIRECT on, a key call
    over plain HTTP is sent to HTTPS before anything is read or charged."""
    import asyncio

    from config.gateway import GatewayHandler

    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["api.example.com"]
    handler = GatewayHandler()  # its middleware read the settings now, as at start-up

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=handler)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://api.example.com") as client:
            return await client.post("/v1/chat/completions", json=CALL,
                                     headers={"Authorization": "Bearer sk-anything"})

    response = asyncio.run(call())

    assert response.status_code == 301
    assert response.headers["Location"] == "https://api.example.com/v1/chat/completions"
    assert not UsageRecord.objects.exists()
