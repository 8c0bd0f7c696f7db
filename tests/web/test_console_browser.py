"""The staff confirmation page in real Chromium (issue 15): a grant that waits for a second
approver shows each account before and after, the wait in plain words and the real expiry,
at 1440x900 and on a 390x844 phone, with no Content-Security-Policy violation.

Screenshots: artifacts/screenshots/console-*.png."""

import re

import pytest

from accounts.models import User
from credits import services
from credits.models import GrantKind, StaffAction
from tests.books import USD
from tests.browser import SHOTS, needs_chromium
from tests.web.test_csp import CspWatch

PASSWORD = "correct-horse-battery"

pytestmark = [pytest.mark.browser, needs_chromium, pytest.mark.usefixtures("seed_data")]


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"console-{name}.png"), full_page=True)


def test_staff_confirmation_page_on_desktop_and_phone(page, make_staff, settings):
    from playwright.sync_api import expect

    settings.ADMIN_APPROVAL_THRESHOLD_USD = "100"
    settings.PROMOTION_EXPIRY_DAYS = 30
    finance = make_staff("finance@tokenbank.test", "Finance")
    customer = User.objects.create_user("grace@example.com", PASSWORD)
    services.add_credit(user=customer, amount_micros=12 * USD, kind=GrantKind.PURCHASED)
    services.use_credits(user=customer, amount_micros=1_250_000, reference="req_browser_1")

    watch = CspWatch(page)
    page.set_viewport_size({"width": 1440, "height": 900})
    watch.visit("/admin/login/", "console-login")
    page.get_by_label("Email address").fill(finance.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/")
    watch.check("console-index")
    expect(page.locator("#site-name")).to_contain_text("TokenBank credit console")
    shot(page, "index-1440")

    watch.visit(f"/admin/accounts/user/money/grant/?ids={customer.pk}", "console-grant-form")
    page.get_by_label("Amount").fill("250")
    page.get_by_label("Kind").select_option(GrantKind.PROMOTIONAL)
    page.get_by_label("Internal reason").fill("Enterprise trial, deal #88 (internal)")
    page.get_by_label("Note to the customer").fill("Welcome to your trial")
    shot(page, "grant-form-1440")
    page.get_by_role("button", name="Review…").click()
    watch.check("console-grant-confirm")

    expect(page.locator("#approval-note")).to_contain_text("This will wait for a second approver.")
    expect(page.locator("#approval-note")).to_contain_text("above $100.00")
    row = page.locator("#money-effects tbody tr")
    expect(row).to_contain_text("$10.75→$260.75")  # balance (and available) before → after
    expect(row).to_contain_text(re.compile(r"expires \d{4}-\d\d-\d\d \d\d:\d\d UTC"))
    expect(page.get_by_role("button", name="Confirm: request approval")).to_be_visible()
    shot(page, "confirm-1440")

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    shot(page, "confirm-390")
    # The confirmation's own content fits the phone (wide tables scroll in their box).
    overflow = page.evaluate("""() => [...document.querySelectorAll(
        '#content-main > *:not(.scroll), .plain-note, .submit-row')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).length""")
    assert overflow == 0
    expect(page.get_by_role("button", name="Confirm: request approval")).to_be_visible()

    page.get_by_role("button", name="Confirm: request approval").click()
    page.wait_for_url(f"**/admin/accounts/user/{customer.pk}/change/")
    assert StaffAction.objects.get().status == "PENDING"
    customer.refresh_from_db()
    assert customer.credit_balance == 12 * USD - 1_250_000  # nothing moved yet

    # The refund page lists the customer's calls, the charge prefilled when one is picked.
    page.set_viewport_size({"width": 1440, "height": 900})
    watch.visit(f"/admin/accounts/user/money/refund/?ids={customer.pk}", "console-refund")
    page.get_by_role("link", name="Refund this call").click()
    expect(page.get_by_label("Amount")).to_have_value("1.250000")
    shot(page, "refund-1440")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "refund-390")

    # The metrics table fits a 1280 px screen; the daily trend is drawn in SVG.
    page.set_viewport_size({"width": 1280, "height": 900})
    watch.visit("/admin/credits/promotion/metrics/", "console-metrics")
    expect(page.locator(".daily-chart svg").first).to_be_visible()
    fits = page.evaluate("""() => { const t = document.querySelector('#result_list');
        return t ? t.getBoundingClientRect().right <= window.innerWidth : true; }""")
    assert fits
    shot(page, "metrics-1280")

    assert watch.problems == [], "\n".join(watch.problems)
