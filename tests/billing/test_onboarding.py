"""Landing, sign-up, log-in, password reset and the onboarding page in every promotion state."""

import re

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import ApiKey, User
from billing.onboarding import ONBOARDING_SECRET_KEY
from credits.models import CreditGrant, GrantKind
from inference.services import record_first_token
from tests.billing.conftest import PASSWORD, backdate_signup

pytestmark = pytest.mark.django_db


def test_landing_shows_offer_prices_and_sign_up_links(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "$20 free" in html
    assert "demo-small" in html and "$0.15" in html and "$0.60" in html  # seeded launch prices
    assert reverse("onboarding:signup") in html
    assert reverse("login") in html


def test_landing_without_a_live_promotion_advertises_no_offer(client):
    from credits.promotion.terms import deactivate_promotion, live_promotion

    deactivate_promotion(promotion=live_promotion())
    html = client.get("/").content.decode()
    assert 'data-offer-state="none"' in html
    assert "$20 free" not in html
    assert "start the clock" not in client.get(reverse("onboarding:signup")).content.decode()


@pytest.mark.parametrize(("state", "shows"), [
    ("in_window", "Open the playground"), ("claimed", "Claimed"), ("ended", "Ended"),
])
def test_landing_shows_a_signed_in_users_own_offer_state(signed_in, member, state, shows):
    if state == "claimed":
        record_first_token(user_id=member.pk)
    elif state == "ended":
        backdate_signup(member, 181)
    html = signed_in.get("/").content.decode()
    assert f'data-offer-state="{state}"' in html
    assert shows in html


def test_sign_up_logs_in_and_lands_on_onboarding_with_the_key_shown_once(client):
    response = client.post(reverse("onboarding:signup"),
                           {"email": "New@Example.com", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("onboarding:onboarding")
    user = User.objects.get(email="new@example.com")
    key = ApiKey.objects.get(user=user)

    first = client.get(reverse("onboarding:onboarding")).content.decode()
    secret = re.search(r'data-secret>(sk-[^<]+)<', first).group(1)
    assert secret[-4:] == key.last_four
    assert f"Bearer {secret}" in first  # the curl snippet uses the real key
    assert ONBOARDING_SECRET_KEY not in client.session

    again = client.get(reverse("onboarding:onboarding")).content.decode()
    assert secret not in again
    assert key.masked in again


def test_sign_up_with_a_taken_email_or_weak_password_shows_field_errors(client, member):
    response = client.post(reverse("onboarding:signup"),
                           {"email": "GRACE@example.com", "password": "12345678"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "already exists" in html
    assert "too common" in html or "entirely numeric" in html
    assert User.objects.count() == 1


def test_log_in_with_email_goes_to_dashboard_and_log_out_returns_to_landing(client, member):
    response = client.post(reverse("login"), {"username": "grace@example.com", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("billing:dashboard")
    assert client.get(reverse("billing:dashboard")).status_code == 200
    response = client.post(reverse("logout"))
    assert response["Location"] == reverse("landing")
    assert client.get(reverse("billing:dashboard")).status_code == 302


def test_password_reset_emails_a_link_that_sets_a_new_password(client, member):
    response = client.post(reverse("password_reset"), {"email": "grace@example.com"})
    assert response["Location"] == reverse("password_reset_done")
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form_url = client.get(link)["Location"]  # Django swaps the token for a session marker
    response = client.post(form_url, {"new_password1": "another-long-passphrase",
                                      "new_password2": "another-long-passphrase"})
    assert response["Location"] == reverse("password_reset_complete")
    member.refresh_from_db()
    assert member.check_password("another-long-passphrase")


def test_onboarding_in_window_renders_server_deadline_and_countdown(signed_in, member):
    html = signed_in.get(reverse("onboarding:onboarding")).content.decode()
    deadline_ms = int(re.search(r'data-deadline-ms="(\d+)"', html).group(1))
    now_ms = int(re.search(r'data-server-now-ms="(\d+)"', html).group(1))
    assert deadline_ms == int(member.date_joined.timestamp() * 1000) + 180_000
    assert 0 < deadline_ms - now_ms <= 180_000
    assert "$20 free credit if you generate your first token in the next" in html
    assert re.search(r"data-countdown-clock>(2:5\d|3:00)<", html)
    assert 'aria-live="polite"' in html
    assert 'data-state="in_window"' in html


def test_onboarding_after_the_window_shows_offer_ended_and_purchase_path(signed_in, member):
    backdate_signup(member, 181)
    html = signed_in.get(reverse("onboarding:onboarding")).content.decode()
    assert 'data-state="ended"' in html
    assert "offer has ended" in html
    assert "data-deadline-ms" not in html  # no countdown for an offer that is gone
    dashboard = signed_in.get(reverse("billing:dashboard")).content.decode()
    assert "in the next" not in dashboard  # no stale offer strip anywhere


def test_onboarding_after_claiming_shows_the_credit_and_ticks_every_step(signed_in, member):
    record_first_token(user_id=member.pk)
    assert CreditGrant.objects.filter(user=member, kind=GrantKind.PROMOTIONAL).exists()
    html = signed_in.get(reverse("onboarding:onboarding")).content.decode()
    assert 'data-state="claimed"' in html
    assert "You earned $20 of credit" in html
    assert html.count('class="is-done"') == 4
    assert "in the next" not in signed_in.get(reverse("billing:dashboard")).content.decode()


def test_offer_strip_counts_down_on_other_pages_while_in_window(signed_in):
    html = signed_in.get(reverse("billing:dashboard")).content.decode()
    assert "offer-strip" in html and "data-deadline-ms" in html


def test_pages_need_a_login(client):
    for name in ("onboarding:onboarding", "billing:dashboard", "billing:history_csv"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_onboarding_for_a_user_without_any_offer_shows_no_countdown_or_credit_step(
    signed_in, member
):
    from django.utils import timezone

    from credits.models import PromotionAssignment

    PromotionAssignment.objects.update_or_create(
        user=member, defaults={"promotion": None, "variant": None, "assigned_at": timezone.now()})
    html = signed_in.get(reverse("onboarding:onboarding")).content.decode()
    assert 'data-state="none"' in html
    assert "data-deadline-ms" not in html
    assert 'data-step="credit"' not in html
    assert "Generate your first token" in html
