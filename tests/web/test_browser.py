"""End to end in real headless Chromium (Debian's /usr/bin/chromium; Playwright downloads nothing).

Screenshots of each page go to artifacts/screenshots/ (git-ignored) for a person to look at.
"""

import datetime as dt
import re

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.models import User
from credits.models import CreditGrant, GrantKind
from credits.money import format_usd, headline_usd
from inference.models import UsageRecord
from tests.browser import SHOTS, needs_chromium

PASSWORD = "correct-horse-battery"

pytestmark = [pytest.mark.browser, needs_chromium, pytest.mark.usefixtures("seed_data")]


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_up(page, email: str) -> None:
    page.goto("/")
    shot(page, "01-landing")
    page.get_by_role("link", name="Sign up free").first.click()
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    shot(page, "02-signup")
    page.get_by_role("button", name=re.compile("Create account")).click()
    page.wait_for_url("**/accounts/onboarding/")


@override_settings(DEMO_BACKEND_TOKEN_DELAY_MS=40)  # paced tokens, so the stream is visible
def test_sign_up_generate_first_token_earns_20_and_dashboard_shows_it(page):
    from playwright.sync_api import expect

    sign_up(page, "e2e-happy@example.com")
    clock = page.locator(".countdown-clock")
    expect(clock).to_have_text(re.compile(r"^(3:00|2:5\d)$"))
    expect(page.locator("#offer")).to_contain_text("$20 free credit if you generate your first token")
    expect(page.locator("[data-secret]")).to_have_text(re.compile(r"^sk-"))
    shot(page, "03-onboarding")

    # Count how many times the reply grows: a streamed reply grows chunk by chunk.
    page.evaluate("""() => {
        window.__growth = 0;
        new MutationObserver(() => { window.__growth += 1; }).observe(
            document.getElementById('pg-output'),
            {childList: true, characterData: true, subtree: true});
    }""")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.get_by_role("button", name="Generate").click()
    assert sent.value.post_data_json["max_tokens"] == 256  # the hold covers 256 tokens, not 4,096
    expect(page.locator("#pg-meta")).to_contain_text("Done", timeout=20_000)
    assert page.locator("#pg-output").inner_text().strip()
    assert page.evaluate("window.__growth") > 1

    celebration = page.locator("#celebration")
    expect(celebration).to_be_visible()
    expect(celebration).to_contain_text("$20 credited")
    expect(page.locator("[data-celebration-balance]")).to_have_text(re.compile(r"^\$19\.\d\d$"))
    expect(page.locator(".progress-list li.is-done")).to_have_count(4)
    expect(page.locator("#offer")).to_have_attribute("data-state", "claimed")
    user = User.objects.get(email="e2e-happy@example.com")
    # Headlines read like money, rounded down (issue 15): "$19.99" for $19.999…, never "$20.00";
    # the exact balance after the call is in their title.
    balance = User.objects.get(pk=user.pk).credit_balance
    assert balance < 20_000_000
    expect(page.locator("[data-celebration-balance]")).to_have_text(headline_usd(balance))
    expect(page.locator("[data-nav-balance]")).to_have_text(headline_usd(balance))
    expect(page.locator("[data-celebration-balance]")).to_have_attribute(
        "title", "Exactly $" + format_usd(balance))
    page.wait_for_timeout(600)  # let the pop-in animation settle for the screenshot
    shot(page, "04-onboarding-celebration")

    grant = CreditGrant.objects.get(user=user, kind=GrantKind.PROMOTIONAL)
    assert grant.amount_micros == 20_000_000
    assert abs(grant.expires_at - (timezone.now() + dt.timedelta(days=30))) < dt.timedelta(minutes=5)
    record = UsageRecord.objects.get(user=user)

    celebration.get_by_role("link", name=re.compile("Open the dashboard")).click()
    page.wait_for_url("**/billing/")
    grants = page.locator("[data-grants]")
    expect(grants).to_contain_text("Promotional")
    expect(grants).to_contain_text("$20.00")
    expect(grants).to_contain_text("in 30 days")
    expiry = f"{grant.expires_at:%b} {grant.expires_at.day}, {grant.expires_at:%Y}"
    expect(page.locator("[data-promo-expiry]")).to_contain_text(expiry)
    usage = page.locator("[data-usage-log]")
    expect(usage).to_contain_text(record.model_id)
    expect(usage).to_contain_text(str(record.completion_tokens))
    expect(page.locator("[data-history]")).to_contain_text("First-token promotion")
    shot(page, "05-dashboard")

    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "06-dashboard-phone")


@override_settings(PROMOTION_WINDOW_SECONDS=4)
def test_short_window_counts_down_to_offer_ended_and_a_call_gets_402(page):
    from playwright.sync_api import expect

    sign_up(page, "e2e-late@example.com")
    secret = page.locator("[data-secret]").inner_text()
    expect(page.locator("#offer")).to_have_attribute("data-state", "ended", timeout=20_000)
    expect(page.locator("#offer")).to_contain_text("offer has ended")
    expect(page.get_by_role("link", name="Buy credits").last).to_be_visible()
    expect(page.locator('[data-step="credit"]')).to_have_class(re.compile("is-missed"))

    page.get_by_role("button", name="Generate").click()
    error = page.locator('[data-playground-error="402"]')
    expect(error).to_be_visible()
    assert error.locator("p").inner_text().count("nsufficient credit") == 1
    assert "Not enough credit" not in error.inner_text()
    expect(error.get_by_role("link", name="Buy credits")).to_be_visible()
    shot(page, "07-onboarding-offer-ended")

    response = page.request.post("/v1/chat/completions", headers={
        "Authorization": f"Bearer {secret}"}, data={
        "model": "demo-small", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status == 402
    user = User.objects.get(email="e2e-late@example.com")
    assert user.credit_balance == 0 and not user.promotion_claimed

    page.reload()
    expect(page.locator("#offer")).to_have_attribute("data-state", "ended")
    page.goto("/billing/")
    expect(page.locator('[data-alert="exhausted"]')).to_be_visible()
    expect(page.locator(".offer-strip")).to_have_count(0)
    shot(page, "08-dashboard-exhausted")


def test_first_token_from_curl_elsewhere_ticks_the_page_and_celebrates(page, live_server):
    """The onboarding page polls GET /api/credits, so a token made outside it still counts.
    This visitor prefers reduced motion: the celebration comes without animation or confetti."""
    from playwright.sync_api import expect

    page.emulate_media(reduced_motion="reduce")
    sign_up(page, "e2e-curl@example.com")
    secret = page.locator("[data-secret]").inner_text()
    expect(page.locator('[data-step="first_token"]')).not_to_have_class(re.compile("is-done"))
    # Another client, as curl would be: its own context (no cookies), the bearer key only.
    elsewhere = page.context.browser.new_context(base_url=live_server.url)
    response = elsewhere.request.post(
        "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
        data={"model": "demo-small", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status == 200
    elsewhere.close()
    expect(page.locator('[data-step="first_token"]')).to_have_class(re.compile("is-done"))
    expect(page.locator("#celebration")).to_be_visible()
    expect(page.locator(".progress-list li.is-done")).to_have_count(4)
    expect(page.locator("#celebration")).not_to_have_class(re.compile("is-animated"))
    expect(page.locator("#celebration .confetti i")).to_have_count(0)
