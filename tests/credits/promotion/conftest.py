import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from config.celery import app as celery_app

REGISTER = "/api/auth/register"
PASSWORD = "a-long-passphrase-42"


@pytest.fixture(autouse=True)
def _abuse_settings(settings, request):
    """Known limits for every test; the per-address 429 throttle off (its cache counter is
    shared across tests) except where a test turns it back on."""
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 0
    settings.TRUSTED_PROXIES = []
    settings.SIGNUPS_PER_IP_PER_HOUR = 3
    settings.SIGNUPS_PER_NETWORK_PER_HOUR = 10
    settings.PROMOTIONS_PER_NETWORK_PER_DAY = 5
    settings.PROMOTION_CAP_USD_PER_HOUR = "0"
    settings.PROMOTION_CAP_USD_PER_DAY = "0"
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = False
    uses_db = "django_db" in request.keywords or {"db", "transactional_db"} & set(request.fixturenames)
    if uses_db:
        with request.getfixturevalue("django_db_blocker").unblock():
            cache.clear()


@pytest.fixture
def register():
    """register(email, ip="10.0.0.1", xff=None) -> the API response."""

    def post(email: str, *, ip: str = "10.0.0.1", xff: str | None = None, password: str = PASSWORD):
        extra = {"REMOTE_ADDR": ip}
        if xff is not None:
            extra["HTTP_X_FORWARDED_FOR"] = xff
        return APIClient().post(REGISTER, {"email": email, "password": password}, format="json",
                                **extra)

    return post


@pytest.fixture
def eager_tasks():
    """Enqueued tasks run inline, so a test sees what the worker would send."""
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager = conf.task_eager_propagates = True
    yield
    conf.task_always_eager, conf.task_eager_propagates = saved
