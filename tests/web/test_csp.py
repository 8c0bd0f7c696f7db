"""The Content-Security-Policy holds on every page: real Chromium visits the customer's pages and
the console and counts the violations it reports (none allowed).

A violation is what the browser reports through `securitypolicyviolation` events and console
errors: an inline <script> or <style> without the nonce, a style="" attribute, an eval, a
resource from another origin.
"""

import re

import pytest

from accounts.models import User
from billing.models import Purchase
from credits.models import Promotion
from tests.browser import SHOTS, needs_chromium
from tests.seeds import seed_credit_packages

PASSWORD = "correct-horse-battery"

pytestmark = [pytest.mark.browser, needs_chromium, pytest.mark.usefixtures("seed_data")]

# Installed before any script of each page runs.
LISTEN = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(
    `${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile}:${e.lineNumber}`
    + (e.sample ? ` (${e.sample})` : '')));
"""


def _directives(policy: str) -> dict[str, list[str]]:
    parts = (d.split() for d in policy.split(";") if d.strip())
    return {name: sources for name, *sources in parts}


class CspWatch:
    """Collects, per page, the CSP header, the violations and the console errors."""

    def __init__(self, page):
        self.page = page
        self.problems: list[str] = []
        self.visited: list[str] = []
        page.add_init_script(LISTEN)
        # Chrome logs each refusal as a console error too (its event may not reach the page);
        # other console errors (the admin has no favicon: a 404) are not the policy's.
        page.on("console", lambda m: m.type == "error" and "Content Security Policy" in m.text
                and self.problems.append(f"{page.url}: console error: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"{page.url}: page error: {e}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(
            f"{page.url}: {r.status} for {r.url}"))

    def visit(self, path: str, name: str) -> None:
        response = self.page.goto(path)
        assert response is not None and response.ok, (path, response and response.status)
        self.check(name, response.headers)

    def check(self, name: str, headers: dict | None = None) -> None:
        """The page now shown: its header (when given) and what it reported so far."""
        if headers is not None:
            directives = _directives(headers.get("content-security-policy", ""))
            for directive in ("script-src", "style-src"):  # our origin, or the page's nonce
                sources = directives.get(directive, [])
                assert sources and all(s == "'self'" or s.startswith("'nonce-") for s in sources), (
                    self.page.url, directive, sources)
        self.page.wait_for_load_state("load")
        self.page.wait_for_timeout(250)  # deferred scripts run, their effects report
        for violation in self.page.evaluate("window.__csp || []"):
            self.problems.append(f"{self.page.url}: {violation}")
        self.visited.append(self.page.url)
        self.page.screenshot(path=str(SHOTS / f"csp-{name}.png"), full_page=True)


def test_every_page_passes_the_content_security_policy(page, live_server, settings):
    from playwright.sync_api import expect

    settings.PAYMENTS_TEST_MODE = True
    settings.STRIPE_SECRET_KEY = ""
    seed_credit_packages()
    watch = CspWatch(page)

    # A newcomer: landing, sign-up, onboarding (a first token from the playground), dashboard.
    watch.visit("/", "landing")
    watch.visit("/accounts/signup/", "signup")
    page.get_by_label("Email address").fill("csp@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Create account")).click()
    page.wait_for_url("**/accounts/onboarding/")
    watch.check("onboarding")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#celebration")).to_be_visible(timeout=20_000)
    watch.check("onboarding-celebration")
    watch.visit("/billing/", "dashboard")
    page.get_by_role("button", name=re.compile("Create key")).click()
    watch.check("dashboard-new-key")
    watch.visit("/billing/usage/", "usage")
    watch.visit("/billing/usage/?group=model&start=2020-01-01&end=2020-01-31", "usage-by-model")
    watch.visit("/docs/", "docs")

    # Buying credit in test mode: the buy page, the test checkout, the page that waits.
    watch.visit("/billing/buy/", "buy")
    page.get_by_role("button", name=re.compile(r"Buy \$")).first.click()
    page.wait_for_url("**/billing/checkout/test/**")
    watch.check("checkout-test")
    purchase = Purchase.objects.get(user__email="csp@example.com")
    watch.visit(f"/billing/purchases/{purchase.pk}/", "purchase-pending")
    page.locator("form[action$='/logout/'] button").click()
    page.wait_for_url("**/")
    watch.visit("/accounts/login/", "login")
    watch.visit("/accounts/password-reset/", "password-reset")

    # The console: log in, the index, a user's change page and a promotion's, lists, metrics.
    staff = User.objects.create_superuser("root@tokenbank.test", PASSWORD)
    watch.visit("/admin/login/", "admin-login")
    page.get_by_label("Email address").fill(staff.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/")
    watch.check("admin-index")
    customer = User.objects.get(email="csp@example.com")
    watch.visit(f"/admin/accounts/user/{customer.pk}/change/", "admin-user-change")
    watch.visit(f"/admin/credits/promotion/{Promotion.objects.first().pk}/change/",
                "admin-promotion-change")
    watch.visit("/admin/accounts/user/", "admin-users")
    watch.visit("/admin/credits/ledgerentry/", "admin-ledger")
    watch.visit("/admin/credits/promotion/metrics/", "admin-metrics")
    watch.visit("/api/docs/", "api-docs")

    assert watch.problems == [], "\n".join(watch.problems)
    assert len(watch.visited) >= 21
