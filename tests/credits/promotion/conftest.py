import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from credits.models import CreditGrant, GrantKind, Promotion
from inference.services import record_first_token
from tests.books import USD

REGISTER = "/api/auth/register"
PASSWORD = "a-long-passphrase-42"


@pytest.fixture(autouse=True)
def _abuse_settings(settings):
    """Known limits for every test; the per-address 429 throttle off (its cache counter is
    shared across tests; tests.api_fixtures empties it) except where a test turns it back on."""
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 0
    settings.TRUSTED_PROXIES = []
    settings.SIGNUPS_PER_IP_PER_HOUR = 3
    settings.SIGNUPS_PER_NETWORK_PER_HOUR = 10
    settings.PROMOTIONS_PER_NETWORK_PER_DAY = 5
    settings.PROMOTION_CAP_USD_PER_HOUR = "0"
    settings.PROMOTION_CAP_USD_PER_DAY = "0"
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = False


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
def live(db):
    """Only this $20 first-token promotion is live."""
    Promotion.objects.update(is_active=False)
    return Promotion.objects.create(name="Launch", active_from=timezone.now() - dt.timedelta(days=1),
                                    amount_micros=20 * USD, window_seconds=180, expiry_days=30)


def signed_up(register, email: str, ip: str = "10.0.0.1") -> User:
    response = register(email, ip=ip)
    assert response.status_code == 201, response.content
    return User.objects.get(pk=response.json()["user"]["id"])


def first_token(user: User) -> CreditGrant | None:
    record_first_token(user_id=user.pk)
    user.refresh_from_db()
    return CreditGrant.objects.filter(user=user, kind=GrantKind.PROMOTIONAL).first()


def promotion_json(user: User) -> dict:
    client = APIClient()
    client.force_authenticate(user)
    return client.get("/api/credits").json()["promotion"]


def first_token_after(user: User, seconds: float) -> None:
    record_first_token(user_id=user.pk, at=user.date_joined + dt.timedelta(seconds=seconds))
    user.refresh_from_db()
