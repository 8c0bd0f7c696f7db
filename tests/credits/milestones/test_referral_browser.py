"""A referred sign-up in real headless Chromium: the link, the sign-up, the first purchase,
then both grants on both dashboards (screenshots in artifacts/screenshots/referral-*)."""

import re

import pytest

from accounts.models import User
from credits.models import CreditGrant, GrantKind, Referral, ReferralStatus
from credits.promotion import referrals
from tests.browser import SHOTS, needs_chromium

PASSWORD = "a-long-passphrase-42"


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"referral-{name}.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / f"referral-{name}-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})


def log_in(page, email: str) -> None:
    page.goto("/accounts/login/?next=/billing/")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/billing/")


@pytest.mark.browser
@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_referred_sign_up_and_first_purchase_pay_both_grants(
        page, live_server, packages, demo_models, test_provider, eager_tasks, settings):
    from playwright.sync_api import expect

    settings.REGISTER_RATE_LIMIT_PER_HOUR = 0
    settings.SIGNUPS_PER_IP_PER_HOUR = 0
    settings.SIGNUPS_PER_NETWORK_PER_HOUR = 0
    host = User.objects.create_user("host@example.com", PASSWORD)
    # The host signed up from elsewhere (the live server sees every browser as 127.0.0.1).
    code = referrals.referral_code_for(user=host)
    page.set_viewport_size({"width": 1440, "height": 900})

    log_in(page, host.email)
    link = page.locator("[data-referral-link]")
    expect(link).to_contain_text(f"/accounts/signup/?ref={code}")
    shot(page, "host-before")
    page.context.clear_cookies()

    page.goto(link.inner_text().replace(live_server.url, ""))
    page.get_by_label("Email address").fill("friend@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Create account")).click()
    page.wait_for_url("**/accounts/onboarding/")
    friend = User.objects.get(email="friend@example.org")
    assert Referral.objects.get(referred=friend).referrer == host
    # Today's default promotion (the first token alone): the onboarding page is as it was.
    expect(page.locator("[data-milestones]")).to_have_count(0)
    shot(page, "friend-onboarding")

    page.goto("/billing/buy/")
    page.get_by_role("button", name="Buy $10.00").click()
    expect(page).to_have_url(re.compile(r"/billing/checkout/test/"))
    page.get_by_role("button", name="Confirm test payment").click()
    expect(page.get_by_role("heading", name="Payment received")).to_be_visible()

    referral = Referral.objects.get(referred=friend)
    assert referral.status == ReferralStatus.REWARDED, referral.refusal_reason
    welcome = CreditGrant.objects.get(user=friend, kind=GrantKind.REFERRAL)
    assert welcome.amount_micros == 10_000_000
    page.goto("/billing/")
    expect(page.locator(".balance-pill")).to_have_text("$20.00")  # $10 bought + $10 welcome
    expect(page.get_by_text("Welcome bonus: you were referred").first).to_be_visible()
    shot(page, "friend-dashboard")

    page.context.clear_cookies()
    log_in(page, host.email)
    expect(page.locator("[data-referral-earned]")).to_have_text("$10.00")
    expect(page.locator("[data-referral-rewarded]")).to_have_text("1")
    expect(page.locator(".balance-pill")).to_have_text("$10.00")
    page.locator("[data-referral-card]").scroll_into_view_if_needed()
    shot(page, "host-after")
