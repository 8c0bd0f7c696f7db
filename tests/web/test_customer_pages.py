"""The customer pages in real Chromium, on a desk (1440x900) and on a phone (390x844): the
onboarding fold, the countdown's urgency, the celebration that does not move the reply, the
usage page. Screenshots go to artifacts/screenshots/pages-*.png for a person to look at."""

import datetime as dt
import re
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.models import ApiKey, User
from tests.billing.conftest import make_usage
from tests.browser import SHOTS, needs_chromium

PASSWORD = "correct-horse-battery"
DESK = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = [pytest.mark.browser, needs_chromium, pytest.mark.usefixtures("seed_data")]


def shots(page, name: str, *, full_page: bool = False) -> None:
    """The page as a desk and a phone show it (the phone last: the test goes on there)."""
    for label, size in (("desk", DESK), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"pages-{name}-{label}.png"), full_page=full_page)
        if full_page:  # a long page also in screens, readable one at a time
            height = page.evaluate("document.documentElement.scrollHeight")
            for i, top in enumerate(range(0, height, size["height"])):
                page.screenshot(path=str(SHOTS / f"pages-{name}-{label}-{i + 1}.png"), full_page=True,
                                clip={"x": 0, "y": top, "width": size["width"],
                                      "height": min(size["height"], height - top)})


def sign_up(page, email: str) -> User:
    page.goto("/accounts/signup/")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Create account")).click()
    page.wait_for_url("**/accounts/onboarding/")
    return User.objects.get(email=email)


def box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def test_on_a_phone_generate_is_in_the_first_screen_beside_the_running_clock(page):
    from playwright.sync_api import expect

    page.goto("/")
    shots(page, "landing", full_page=True)
    page.set_viewport_size(PHONE)
    sign_up(page, "phone@example.com")
    clock = page.locator(".countdown-clock")
    expect(clock).to_have_text(re.compile(r"^(3:00|2:5\d)$"))
    generate = page.get_by_role("button", name="Generate")
    for element in (clock, generate):
        b = element.bounding_box()
        assert b["y"] >= 0 and b["y"] + b["height"] <= PHONE["height"], b  # in the first screen
    # The nav is compact: a Menu button; its links open on demand.
    expect(page.locator("#site-nav")).to_be_hidden()
    expect(page.locator("[data-nav-balance]")).to_be_visible()
    page.get_by_role("button", name="Menu").click()
    expect(page.locator("#site-nav").get_by_role("link", name="Docs")).to_be_visible()
    page.get_by_role("button", name="Menu").click()
    # The snippet's Copy button sits above the code, not over it.
    copy = box(page, "#panel-curl .copy-btn")
    code = box(page, "#panel-curl pre")
    assert copy["y"] + copy["height"] <= code["y"] + 0.5
    assert re.match(r"^\d:\d\d left · ", page.title())  # the time left in the tab's title
    shots(page, "onboarding-running")


def test_countdown_turns_amber_under_a_minute_and_red_with_a_pulse_under_30_seconds(page):
    from playwright.sync_api import expect

    user = sign_up(page, "urgent@example.com")
    banner = page.locator("#offer")
    expect(banner).not_to_have_class(re.compile(r"is-amber|is-urgent"))
    width = page.locator("[data-countdown-bar]").evaluate("e => e.getBoundingClientRect().width")

    User.objects.filter(pk=user.pk).update(date_joined=timezone.now() - dt.timedelta(seconds=130))
    page.reload()
    expect(banner).to_have_class(re.compile(r"\bis-amber\b"))
    expect(banner).not_to_have_class(re.compile(r"\bis-urgent\b"))
    shrunk = page.locator("[data-countdown-bar]").evaluate("e => e.getBoundingClientRect().width")
    assert shrunk < width * 0.35  # 50 s of 180 s left: the bar shrank to under a third
    assert page.title().startswith("0:")
    shots(page, "onboarding-amber")

    User.objects.filter(pk=user.pk).update(date_joined=timezone.now() - dt.timedelta(seconds=160))
    page.reload()
    expect(banner).to_have_class(re.compile(r"\bis-urgent\b"))
    expect(banner).not_to_have_class(re.compile(r"\bis-amber\b"))
    animation = page.locator(".countdown-clock").evaluate("e => getComputedStyle(e).animationName")
    assert animation == "urgent-pulse"
    shots(page, "onboarding-red")

    page.emulate_media(reduced_motion="reduce")
    page.reload()
    expect(banner).to_have_class(re.compile(r"\bis-urgent\b"))
    animation = page.locator(".countdown-clock").evaluate("e => getComputedStyle(e).animationName")
    assert animation == "none"  # red still, without the pulse


@pytest.mark.parametrize("size", [PHONE, DESK], ids=["phone", "desk"])
def test_the_celebration_does_not_move_the_reply_and_shows_the_balance_rounded_down(page, size):
    from playwright.sync_api import expect

    page.set_viewport_size(size)
    user = sign_up(page, f"party-{size['width']}@example.com")
    output = page.locator("#pg-output")
    before = output.bounding_box()["y"]
    page.get_by_role("button", name="Generate").click()
    celebration = page.locator("#celebration")
    expect(celebration).to_be_visible(timeout=20_000)
    expect(page.locator("#pg-meta")).to_contain_text("Done", timeout=20_000)
    assert abs(output.bounding_box()["y"] - before) <= 1  # the reply did not move
    balance = User.objects.get(pk=user.pk).credit_balance
    assert 19_990_000 <= balance < 20_000_000
    expect(celebration).to_contain_text("$20 credited")
    expect(page.locator("[data-celebration-balance]")).to_have_text("$19.99")  # never "$20.00"
    expect(page.locator("[data-nav-balance]")).to_have_text("$19.99")
    if size is DESK:
        return
    page.wait_for_timeout(700)
    shots(page, "onboarding-celebration")

    page.goto("/billing/")
    expect(page.locator("[data-balance]")).to_have_text("$19.99")
    expect(page.locator("[data-balance-exact]")).to_contain_text(f"${balance / 1_000_000:.6f}".rstrip("0"))
    shots(page, "dashboard", full_page=True)
    # On a phone every request's Cost and each key's Revoke stay within the screen's width.
    for selector in ("[data-usage-log] td[data-label='Cost']", "[data-keys] button.btn-danger"):
        b = box(page, selector)
        assert b and b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"], (selector, b)
    page.goto("/docs/")
    expect(page.locator("#errors")).to_contain_text("insufficient_credits")
    shots(page, "docs", full_page=True)


def test_usage_page_draws_the_chart_and_groups_by_day_model_and_key(page, live_server):
    from playwright.sync_api import expect

    user = sign_up(page, "usage@example.com")
    key = ApiKey.objects.get(user=user)
    for days_ago, model, cost in ((0, "demo-small", 1_500_000), (1, "demo-large", 3_250_000),
                                  (3, "demo-small", 420_000)):
        record = make_usage(user, model_id=model, cost_micros=cost, days_ago=days_ago)
        record.api_key = key
        record.save(update_fields=["api_key"])
    page.goto("/billing/usage/")
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    expect(page.locator("[data-usage-total]")).to_have_text("$5.17")
    expect(page.locator("svg.chart-wide rect")).to_have_count(3)
    expect(page.locator("[data-usage-rows] tbody tr")).to_have_count(3)
    expect(page.locator("[data-usage-rows]")).to_contain_text(key.masked)
    shots(page, "usage", full_page=True)
    expect(page.locator("svg.chart-phone")).to_be_visible()
    cost = box(page, "[data-usage-rows] td[data-label='Cost']")
    assert cost["x"] + cost["width"] <= PHONE["width"]
    page.get_by_role("link", name="Model", exact=True).click()
    expect(page.locator("[data-usage-rows] tbody tr")).to_have_count(2)
    with page.expect_download() as download:
        page.locator("[data-usage-csv]").click()
    text = Path(download.value.path()).read_text()
    assert text.splitlines()[0] == "model,requests,prompt_tokens,completion_tokens,cost_usd"
    assert "demo-large,1,12,30,3.250000" in text
