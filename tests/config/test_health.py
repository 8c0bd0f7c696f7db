"""GET /healthz and GET /readyz (config.health): cheap, unauthenticated, honest."""

import time

import httpx
import pytest
from django.db import connection

from tests.config.servers import Relay, start_site, stop


def test_healthz_answers_without_touching_anything(client):
    # No database access is allowed in this test: a query would fail it.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_names_each_check_and_answers_a_probe_by_address(client, settings):
    settings.DEBUG = False
    settings.SECURE_SSL_REDIRECT = True  # a plain-HTTP probe is not redirected
    # A load balancer probes by the instance's address, not a name in ALLOWED_HOSTS.
    response = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"][connection.vendor] == "ok"
    assert body["checks"]["migrations"] == "ok"
    assert ("redis" in body["checks"]) == bool(settings.REDIS_URL)


@pytest.mark.django_db
def test_readyz_answers_503_naming_redis_when_it_is_down(client, settings, monkeypatch):
    from config import health

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    monkeypatch.setattr(health, "_redis", None)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["redis"]
    assert response.json()["checks"][connection.vendor] == "ok"
    monkeypatch.setattr(health, "_redis", None)  # the next test's Redis, not port 1's


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_naming_postgresql_while_it_is_unreachable_and_200_again_without_a_restart():
    relay = Relay(int(connection.settings_dict["PORT"] or 5432))
    relay.open()
    from tests.config.servers import database_url

    server, url = start_site(env={"DATABASE_URL": database_url(port=relay.port),
                                  "READYZ_TIMEOUT_SECONDS": "1"})
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/readyz").status_code == 200

            relay.close()  # PostgreSQL's port (as the server knows it) now refuses connections
            started = time.monotonic()
            down = http.get("/readyz")
            took = time.monotonic() - started
            assert down.status_code == 503
            assert down.json()["failed"] == ["postgresql"]
            assert down.json()["checks"]["postgresql"] == "failed"
            assert took < 5  # the short timeout, not the pool's ten seconds
            assert http.get("/healthz").status_code == 200  # the process itself is fine
            assert http.get("/readyz").status_code == 503

            relay.open()
            deadline = time.monotonic() + 20
            while (up := http.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
                assert http.get("/healthz").status_code == 200
                time.sleep(0.25)
            print(f"ready again {20 - (deadline - time.monotonic()):.1f} s after PostgreSQL "
                  f"came back; the 503 took {took:.2f} s")
            assert up.status_code == 200, up.text
            assert up.json()["checks"]["postgresql"] == "ok"
            assert server.poll() is None  # the same process: no restart
    finally:
        stop(server)
        relay.close()
