"""Fixtures for tests that call the API with a key, loaded for every test by tests/conftest.py
(pytest_plugins)."""

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.services import create_api_key
from credits.promotion import milestones


@pytest.fixture(autouse=True)
def _fresh_rate_limits(request):
    """Rate-limit counters live in the cache, shared across tests: start each test clean."""
    uses_db = "django_db" in request.keywords or {"db", "transactional_db", "live_server"} & set(
        request.fixturenames)
    if uses_db:
        with request.getfixturevalue("django_db_blocker").unblock():
            cache.clear()
    milestones.forget_usage_tiers()  # what a previous test's tiers taught this process


@pytest.fixture
def api_key(user):
    _key, secret = create_api_key(user=user, name="test")
    return secret


@pytest.fixture
def client_for():
    def make(secret: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


@pytest.fixture
def api(api_key, client_for) -> APIClient:
    return client_for(api_key)
