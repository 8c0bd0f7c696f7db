"""Registration and the credit summary over the JSON API (credits.api)."""

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey, User
from credits.models import GrantKind

REGISTER = "/api/auth/register"


@pytest.mark.django_db
def test_register_returns_user_key_once_and_the_promotion_window():
    response = APIClient().post(REGISTER, {"email": "Lin@Example.com",
                                           "password": "a-long-passphrase-42"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    user = User.objects.get()
    assert body["user"] == {"id": user.pk, "email": "lin@example.com"}
    secret = body["api_key"]
    assert secret.startswith("sk-") and body["api_key_info"]["masked"].startswith("sk-")
    promotion = body["promotion"]
    assert promotion["eligible"] is True and promotion["amount"] == "20.000000"
    assert 0 < promotion["seconds_remaining"] <= 180
    assert promotion["deadline"].startswith(str(user.date_joined.year))
    # The key works at once, and the secret is never shown again.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    keys = client.get("/api/keys").json()["data"]
    assert len(keys) == 1 and "key" not in keys[0] and secret not in str(keys)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"email": "ada@EXAMPLE.com", "password": "a-long-passphrase-42"}, {"email"}),
        ({"email": "x@example.com", "password": "password"}, {"password"}),
        ({"email": "nope", "password": "short"}, {"email", "password"}),
        ({"password": "a-long-passphrase-42"}, {"email"}),
        ("not json at all", set()),
    ],
)
def test_register_refuses_bad_input_per_field_and_creates_nothing(user, body, fields):
    client = APIClient()
    if isinstance(body, str):
        response = client.post(REGISTER, body, content_type="application/json")
    else:
        response = client.post(REGISTER, body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error.get("fields", {})) == fields
    assert User.objects.count() == 1 and ApiKey.objects.count() == 0


@pytest.mark.django_db
def test_credits_shows_balances_grants_promotion_and_paginated_entries(api, user, fund):
    fund(user, 10)
    fund(user, 5, kind=GrantKind.ADJUSTMENT)
    body = api.get("/api/credits?page_size=1").json()
    assert (body["balance"], body["available"], body["held"], body["currency"]) == (
        "15.000000", "15.000000", "0.000000", "USD")
    assert [g["amount"] for g in body["grants"]] == ["5.000000", "10.000000"]
    assert set(body["grants"][0]) == {"id", "kind", "amount", "remaining", "granted_at",
                                      "expires_at"}
    assert body["promotion"]["claimed"] is False and "eligible" in body["promotion"]
    assert body["entries"]["count"] == 2 and len(body["entries"]["results"]) == 1
    assert body["entries"]["results"][0]["amount"] == "5.000000"
    assert body["entries"]["next"]


@pytest.mark.django_db
def test_registration_is_rate_limited_per_address(settings):
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 1
    client = APIClient()
    first = client.post(REGISTER, {"email": "a@example.com", "password": "a-long-passphrase-42"},
                        format="json")
    second = client.post(REGISTER, {"email": "b@example.com", "password": "a-long-passphrase-42"},
                         format="json")
    assert (first.status_code, second.status_code) == (201, 429)
    assert User.objects.count() == 1
