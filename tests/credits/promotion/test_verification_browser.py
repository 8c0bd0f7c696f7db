"""The verification alert in real headless Chromium (Debian's /usr/bin/chromium): seen on the
dashboard, "Resend the link" posts (CSRF) and the page says the link was sent."""

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from accounts.models import User
from credits.models import Promotion
from inference.services import record_first_token
from tests.books import USD
from tests.browser import SHOTS, needs_chromium

PASSWORD = "correct-horse-battery"

pytestmark = [pytest.mark.browser, needs_chromium]


def test_dashboard_alert_resends_the_link(page, settings, mailoutbox, eager_tasks):
    from playwright.sync_api import expect

    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    Promotion.objects.update(is_active=False)
    Promotion.objects.create(name="Launch", active_from=timezone.now() - dt.timedelta(days=1),
                             amount_micros=20 * USD, window_seconds=180, expiry_days=30)
    user, _key, _secret = account_services.register_user(email="lin@example.com", password=PASSWORD)
    User.objects.filter(pk=user.pk).update(  # the sign-up's email went two minutes ago
        verification_email_sent_at=timezone.now() - dt.timedelta(minutes=2))
    record_first_token(user_id=user.pk)
    sent_before = len(mailoutbox)

    page.goto(reverse("login"))
    page.get_by_label(re.compile("Email")).fill("lin@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto("/billing/")
    alert = page.get_by_role("alert").filter(has_text="Verify your email to unlock $20.00")
    expect(alert).to_contain_text("we sent a link to lin@example.com")
    page.screenshot(path=str(SHOTS / "09-dashboard-verify-email.png"))

    alert.get_by_role("button", name="Resend the link").click()
    page.wait_for_url("**/billing/")
    expect(page.get_by_role("status").filter(has_text="Link sent to lin@example.com.")).to_be_visible()
    page.screenshot(path=str(SHOTS / "10-dashboard-verify-email-sent.png"))
    assert [m.to for m in mailoutbox[sent_before:]] == [["lin@example.com"]]

    page.goto(reverse("onboarding:onboarding"))
    expect(page.get_by_role("alert").filter(has_text="Verify your email to unlock $20.00")).to_be_visible()
    page.screenshot(path=str(SHOTS / "11-onboarding-verify-email.png"))
