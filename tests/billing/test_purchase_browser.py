"""Buying $10 with the test provider in real headless Chromium."""

import re

import pytest

from billing.models import Purchase, PurchaseStatus
from credits.models import GrantKind
from tests.browser import SHOTS, needs_chromium


@pytest.mark.browser
@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_buying_10_dollars_in_test_mode_raises_the_balance_and_shows_the_receipt(
    live_server, page, packages, demo_models, test_provider, make_user, fund
):
    buyer = make_user("buyer@example.com")
    fund(buyer, usd=3, kind=GrantKind.ADJUSTMENT, description="welcome")
    from playwright.sync_api import expect


    page.goto(f"{live_server.url}/accounts/login/?next=/billing/")
    page.get_by_label("Email address").fill(buyer.email)
    page.get_by_label("Password").fill("correct-horse-battery")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".balance-pill")).to_have_text("$3.00")

    page.locator("nav").get_by_role("link", name="Buy credits").click()
    expect(page.locator("[data-test-mode]")).to_contain_text("TEST MODE")
    expect(page.locator("[data-package-estimate]").first).to_contain_text("demo-small ≈ 16.6M")
    page.screenshot(path=str(SHOTS / "purchase_buy.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "purchase_buy-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Buy $10.00").click()

    expect(page).to_have_url(re.compile(r"/billing/checkout/test/"))
    expect(page.locator("[data-test-mode]")).to_contain_text("TEST MODE")
    page.screenshot(path=str(SHOTS / "purchase_checkout_test.png"), full_page=True)
    purchase = Purchase.objects.get(user=buyer)

    # The page the provider returns to waits, then updates itself once the payment lands.
    waiting = page.context.new_page()
    waiting.goto(f"{live_server.url}/billing/purchases/{purchase.pk}/")
    expect(waiting.get_by_role("heading", name="Waiting for your payment")).to_be_visible()

    page.get_by_role("button", name="Confirm test payment").click()
    expect(page.get_by_role("heading", name="Payment received")).to_be_visible()
    expect(page.locator("[data-balance]")).to_have_text("$13.00")
    expect(waiting.get_by_role("heading", name="Payment received")).to_be_visible()
    page.screenshot(path=str(SHOTS / "purchase_success.png"), full_page=True)

    page.get_by_role("link", name="Go to the dashboard").click()
    expect(page.locator(".balance-pill")).to_have_text("$13.00")
    row = page.locator(f'[data-purchase="{purchase.pk}"]')
    expect(row).to_contain_text("$10.00")
    expect(row).to_contain_text("Paid")
    expect(row).to_contain_text("TEST MODE")
    page.locator("#history").scroll_into_view_if_needed()
    expect(page.locator("#history")).to_contain_text("Purchased $10.00 (test mode)")
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header would overlap a scrolled shot
    page.screenshot(path=str(SHOTS / "purchase_dashboard.png"), full_page=True)

    purchase.refresh_from_db()
    buyer.refresh_from_db()
    assert purchase.status == PurchaseStatus.FULFILLED
    assert buyer.credit_balance == 13_000_000
