"""The billing dashboard in every state, the history's filter/pagination/CSV, and API keys."""

import csv
import datetime as dt
import io
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import create_api_key
from credits import services
from credits.models import GrantKind, LedgerEntry
from inference.services import record_first_token
from tests.billing.conftest import backdate_signup, make_usage

pytestmark = pytest.mark.django_db
USD = 1_000_000


def page(client, **params) -> str:
    response = client.get(reverse("billing:dashboard"), params)
    assert response.status_code == 200
    return response.content.decode()


def alerts(html: str) -> set[str]:
    return set(re.findall(r'data-alert="([a-z_]+)"', html))


def test_new_member_in_window_sees_the_offer_not_an_exhausted_balance(signed_in):
    html = page(signed_in)
    assert alerts(html) == {"promotion_offer"}
    assert re.search(r"data-balance>\$0\.00<", html)


def test_zero_balance_after_the_window_says_exhausted_with_purchase_path(signed_in, member):
    backdate_signup(member, 600)
    html = page(signed_in)
    assert alerts(html) == {"exhausted"}
    assert "no credit yet" in html


def test_claimed_promotion_shows_balance_promotional_part_and_30_day_expiry(signed_in, member):
    record_first_token(user_id=member.pk)
    html = page(signed_in)
    assert re.search(r"data-balance>\$20\.00<", html)
    assert re.search(r"data-promotional>\$20\.00<", html)
    expiry = timezone.now() + dt.timedelta(days=30)
    assert f"expires {expiry:%b} {expiry.day}, {expiry:%Y}" in html
    assert "promotion_available" in alerts(html)
    grants = html[html.index("data-grants"):html.index('id="history"')]
    assert "Promotional" in grants and "in 30 days" in grants


def test_held_credit_shows_in_balance_card(signed_in, member, fund):
    fund(member, usd=10)
    services.authorize(user=member, amount_micros=2 * USD, reference="call-1")
    html = page(signed_in)
    assert re.search(r"data-balance>\$10\.00<", html)
    assert re.search(r"data-available>\$8\.00<", html)
    assert re.search(r"data-held>\$2\.00<", html)


def test_credit_expiring_within_three_days_and_low_balance_raise_banners(signed_in, member, fund):
    backdate_signup(member, 600)
    fund(member, usd=1, kind=GrantKind.ADJUSTMENT, description="Goodwill",
         expires_at=timezone.now() + dt.timedelta(days=2))
    services.use_credits(user=member, amount_micros=500_000, reference="r1")
    assert alerts(page(signed_in)) == {"expiring", "low_balance"}


def test_history_is_paginated_filtered_by_type_and_newest_first(signed_in, member, fund):
    fund(member, usd=10)
    for i in range(30):
        services.use_credits(user=member, amount_micros=1000 + i, reference=f"r{i}")
    # The default view: the grant stays in sight; the day's 30 charges are one summed row.
    default = page(signed_in)
    assert history_rows(default) == [("Usage", "-$0.030435"), ("Grant", "+$10.00")]
    assert "30 API calls on" in default and "Page 1 of" not in default
    first = page(signed_in, type="USAGE")
    assert "Page 1 of 2" in first and "30 entries" in first
    assert "-$0.001029" in first  # newest debit first
    second = page(signed_in, type="USAGE", page=2)
    assert "Page 2 of 2" in second and "-$0.001<" in second
    grants_only = page(signed_in, type="GRANT")
    rows = grants_only[grants_only.index("data-history"):]
    assert "+$10.00" in rows and "-$0.00" not in rows
    assert "Page 1 of" not in grants_only


def test_two_hundred_micro_charges_do_not_bury_grants_and_purchases(signed_in, member, fund):
    """Money in and out stays row by row; usage is one row per UTC day with its count and sum."""
    fund(member, usd=10, kind=GrantKind.PURCHASED, description="Credit pack $10")
    for i in range(200):
        services.use_credits(user=member, amount_micros=7, reference=f"m{i}")
    fund(member, usd=5, kind=GrantKind.ADJUSTMENT, description="Goodwill from support")
    html = page(signed_in)
    rows = history_rows(html)
    assert rows == [("Grant", "+$5.00"), ("Usage", "-$0.0014"), ("Grant", "+$10.00")]
    assert "200 API calls on" in html
    assert "Goodwill from support" in html and "Credit pack $10" in html
    day = timezone.now().date().isoformat()
    assert f"/billing/usage/?start={day}&amp;end={day}" in html  # the day's calls, one click away
    # The summed row's balance after is the balance after that day's last charge.
    table = html[html.index("data-history"):]
    assert "$9.9986<" in table


def test_csv_export_streams_every_entry_and_honours_the_filter(signed_in, member, fund):
    fund(member, usd=10)
    for i in range(3):
        services.use_credits(user=member, amount_micros=250_000, reference=f"r{i}")
    response = signed_in.get(reverse("billing:history_csv"))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == LedgerEntry.objects.filter(user=member).count() == 4
    assert rows[0]["type"] == "USAGE" and rows[0]["amount_usd"] == "-0.250000"
    assert rows[-1]["type"] == "GRANT" and rows[-1]["balance_after_usd"] == "10.000000"
    usage = signed_in.get(reverse("billing:history_csv"), {"type": "USAGE"})
    usage_rows = list(csv.DictReader(io.StringIO(b"".join(usage.streaming_content).decode())))
    assert [r["type"] for r in usage_rows] == ["USAGE"] * 3


def history_rows(html: str) -> list[tuple[str, str]]:
    """(type label, amount) of each row of the history table."""
    table = html[html.index("data-history"):html.index("</table>", html.index("data-history"))]
    return re.findall(r'<span class="badge">([^<]+)</span></td>\s*<td class="num mono[^"]*"[^>]*>([^<]+)<',
                      table)


def test_metered_calls_read_as_usage_and_holds_show_only_when_asked(signed_in, member, fund):
    fund(member, usd=20)
    hold = services.authorize(user=member, amount_micros=2_459, reference="chatcmpl-1")
    services.capture(hold=hold, amount_micros=11)
    services.use_credits(user=member, amount_micros=500_000, reference="batch-1")
    assert {e.entry_type for e in LedgerEntry.objects.filter(user=member)} >= {
        "GRANT", "HOLD", "CAPTURE", "USAGE"}

    default = page(signed_in)
    assert history_rows(default) == [("Usage", "-$0.500011"), ("Grant", "+$20.00")]  # one day
    assert history_rows(page(signed_in, type="USAGE")) == [("Usage", "-$0.50"), ("Usage", "-$0.000011")]
    assert "held +" not in default
    assert page(signed_in, type="USAGE").count('<span class="badge">Usage</span>') == 2
    with_holds = history_rows(page(signed_in, type="HOLDS"))
    assert ("Hold", "held +$0.002459") in with_holds and len(with_holds) == LedgerEntry.objects.filter(
        user=member).count()
    assert re.search(r'data-filter="HOLDS"[^>]*>Show holds<', default)


def test_csv_export_keeps_every_entry_with_its_raw_type(signed_in, member, fund):
    fund(member, usd=20)
    hold = services.authorize(user=member, amount_micros=2_459, reference="chatcmpl-1")
    services.capture(hold=hold, amount_micros=11)
    response = signed_in.get(reverse("billing:history_csv"))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    ledger = LedgerEntry.objects.filter(user=member).order_by("-created_at", "-id")
    assert [r["type"] for r in rows] == list(ledger.values_list("entry_type", flat=True))
    assert "HOLD" in {r["type"] for r in rows}
    capture = next(r for r in rows if r["type"] == "CAPTURE")
    assert capture["type_label"] == "Usage" and capture["amount_usd"] == "-0.000011"
    usage = signed_in.get(reverse("billing:history_csv"), {"type": "USAGE"})
    usage_rows = list(csv.DictReader(io.StringIO(b"".join(usage.streaming_content).decode())))
    assert [r["type"] for r in usage_rows] == ["CAPTURE"]


def test_headline_balance_rounds_down_to_the_cent_and_rows_keep_every_micro_dollar(
    signed_in, member, fund
):
    fund(member, usd=20)
    services.use_credits(user=member, amount_micros=11, reference="r1")
    html = page(signed_in)
    # The hero and the nav chip read like money, rounded down: never "$20.00" for $19.999989.
    assert re.search(r'data-balance title="Exactly \$19\.999989">\$19\.99<', html)
    assert re.search(r"data-nav-balance[^>]*>\s*\$19\.99\s*<", html)
    assert 'Exactly <span class="mono">$19.999989</span>' in html
    assert re.search(r"data-available>\$19\.999989<", html)  # the breakdown stays exact
    assert "-$0.000011" in html[html.index("data-history"):]  # and so do the rows
    assert "$20.00<" not in html[:html.index("data-grants")]


def test_csv_export_only_contains_the_users_own_entries(signed_in, make_user, fund):
    other = make_user("mallory@example.com")
    fund(other, usd=99)
    response = signed_in.get(reverse("billing:history_csv"))
    body = b"".join(response.streaming_content).decode()
    assert "99.000000" not in body


def test_usage_chart_and_request_log_show_spend_per_model(signed_in, member, make_user):
    make_usage(member, model_id="demo-small", cost_micros=1_500_000, days_ago=0)
    make_usage(member, model_id="demo-large", cost_micros=3_000_000, days_ago=2)
    make_usage(member, model_id="demo-large", cost_micros=7_000_000, days_ago=40)  # too old
    make_usage(make_user("other@example.com"), model_id="demo-medium", cost_micros=9_000_000)
    html = page(signed_in)
    start = html.index('<svg class="chart chart-wide"')
    chart = html[start:html.index("</svg>", start)]
    assert chart.count("<rect") == 2
    assert "demo-small $1.50" in chart and "demo-large $3.00" in chart
    assert "demo-medium" not in html[html.index('<svg class="chart chart-wide"'):html.index("data-grants")]
    log = html[html.index("data-usage-log"):html.index("data-grants")]
    assert log.count("<tr>") == 1 + 3  # header + this user's three requests
    assert "321 ms" in log and "$1.50<" in log


@pytest.mark.parametrize(("peak_micros", "wide", "phone"), [
    (11, ["$0.000000", "$0.000005", "$0.000010", "$0.000015"], ["$0.00000", "$0.00001", "$0.00002"]),
    (2_459, ["$0.000", "$0.001", "$0.002", "$0.003"], ["$0.000", "$0.002", "$0.004"]),
    (12_000, ["$0.00", "$0.01", "$0.02"], ["$0.00", "$0.01", "$0.02"]),
    (1_500_000, ["$0.00", "$0.50", "$1.00", "$1.50"], ["$0.00", "$1.00", "$2.00"]),
])
def test_chart_axis_is_in_cents_from_a_cent_up_with_fewer_ticks_on_phones(
    signed_in, member, peak_micros, wide, phone
):
    make_usage(member, cost_micros=peak_micros)
    html = page(signed_in)

    def labels(variant):
        svg = html[html.index(f'<svg class="chart {variant}"'):]
        svg = svg[:svg.index("</svg>")]
        return re.findall(r'text-anchor="end" dominant-baseline="middle">([^<]+)<', svg)

    assert labels("chart-wide") == wide
    assert labels("chart-phone") == phone

    def dates(variant):
        svg = html[html.index(f'<svg class="chart {variant}"'):]
        return len(re.findall(r'<text [^>]*text-anchor="(?:middle|end|start)">[A-Z][a-z]{2} \d+<',
                              svg[:svg.index("</svg>")]))

    assert (dates("chart-wide"), dates("chart-phone")) == (5, 3)  # a week apart; two weeks on phones


def test_empty_usage_chart_says_so(signed_in):
    html = page(signed_in)
    assert "No spend in the last 30 days yet." in html
    svg = html[html.index('<svg class="chart chart-wide"'):]
    assert svg[:svg.index("</svg>")].count('class="gridline"') == 1  # the baseline, no scale


def test_create_key_shows_the_secret_once(signed_in, member):
    response = signed_in.post(reverse("accounts:create_key"), {"name": "laptop"})
    assert response["Location"] == reverse("billing:dashboard") + "#keys"
    key = ApiKey.objects.get(user=member, name="laptop")
    html = page(signed_in)
    secret = re.search(r"data-new-key>(sk-[^<]+)<", html).group(1)
    assert secret.endswith(key.last_four)
    assert secret not in page(signed_in)


def test_revoke_key_marks_it_revoked_and_other_users_keys_are_out_of_reach(
    signed_in, member, make_user
):
    key = ApiKey.objects.get(user=member)
    other_key, _ = create_api_key(user=make_user("eve@example.com"), name="theirs")
    assert signed_in.post(reverse("accounts:revoke_key", args=[other_key.pk])).status_code == 404
    other_key.refresh_from_db()
    assert other_key.revoked_at is None
    signed_in.post(reverse("accounts:revoke_key", args=[key.pk]))
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert "revoked" in page(signed_in)
    assert signed_in.get(reverse("accounts:revoke_key", args=[key.pk])).status_code == 405


def test_request_log_shows_cached_and_reasoning_tokens_and_estimated_charges(signed_in, member):
    exact = make_usage(member, n=1, prompt_tokens=1000, completion_tokens=300)
    type(exact).objects.filter(pk=exact.pk).update(cached_tokens=600, reasoning_tokens=200)
    make_usage(member, n=2, prompt_tokens=9, completion_tokens=4)
    type(exact).objects.filter(request_id__endswith="-2").update(estimated=True)
    html = page(signed_in)
    log = html[html.index("data-usage-log"):html.index("data-grants")]
    assert "600 cached" in log and "200 reasoning" in log
    assert log.count("data-estimated") == 1 and "estimated</span>" in log
