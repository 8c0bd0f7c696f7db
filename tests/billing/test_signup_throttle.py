"""The web sign-up form and /api/auth/register share one per-address sign-up limit."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import User
from tests.billing.conftest import PASSWORD

pytestmark = pytest.mark.django_db

REGISTER = "/api/auth/register"


def _api_sign_up(email: str, ip: str = "192.0.2.10"):
    return APIClient().post(REGISTER, {"email": email, "password": PASSWORD}, format="json",
                            REMOTE_ADDR=ip)


def _form_sign_up(client, email: str, ip: str = "192.0.2.10"):
    return client.post(reverse("onboarding:signup"), {"email": email, "password": PASSWORD},
                       REMOTE_ADDR=ip)


def test_the_form_refuses_a_sign_up_once_the_api_used_up_the_addresss_limit(client, settings):
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 1
    assert _api_sign_up("api@example.com").status_code == 201
    assert _api_sign_up("api2@example.com").status_code == 429

    response = _form_sign_up(client, "form@example.com")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 3600
    html = response.content.decode()
    assert "Too many sign-ups from your address" in html and "Try again in" in html
    assert "API key" not in html.split("Too many sign-ups")[1].split("</p>")[0]
    assert not User.objects.filter(email="form@example.com").exists()
    assert "_auth_user_id" not in client.session


def test_form_sign_ups_count_against_the_api_limit(client, settings):
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 1
    assert _form_sign_up(client, "form@example.com").status_code == 302
    assert _api_sign_up("api@example.com").status_code == 429
    assert list(User.objects.values_list("email", flat=True)) == ["form@example.com"]


def test_the_limit_is_per_address(client, settings):
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 1
    assert _api_sign_up("api@example.com", ip="192.0.2.10").status_code == 201
    assert _form_sign_up(client, "other@example.com", ip="198.51.100.7").status_code == 302


def test_the_api_429_names_the_sign_up_limit_not_an_api_key(settings):
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 1
    _api_sign_up("first@example.com")
    response = _api_sign_up("second@example.com")
    error = response.json()["error"]
    assert response.status_code == 429 and error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("Rate limit reached for sign-ups from this address.")
    assert "API key" not in error["message"]
