"""Issue 15's customer pages without a browser: headline money, state truth, the 402's link,
the usage page and its CSV, the docs page and the API reference's examples."""

import csv
import datetime as dt
import io
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey
from billing.templatetags.billing_format import usd_headline
from credits import services
from credits.money import headline_usd
from inference.services import record_first_token
from tests.billing.conftest import backdate_signup, make_usage

pytestmark = pytest.mark.django_db
USD = 1_000_000


@pytest.mark.parametrize(("micros", "shown"), [
    (19_999_989, "$19.99"), (20_000_000, "$20.00"), (9_999, "$0.00"), (10_000, "$0.01"),
    (0, "$0.00"), (1_234_567_890, "$1,234.56"), (-1, "-$0.01"), (-2_500_000, "-$2.50"),
])
def test_headline_money_is_dollars_and_cents_rounded_down(micros, shown):
    assert headline_usd(micros) == shown == usd_headline(micros)


def test_headline_refuses_floats():
    with pytest.raises(TypeError):
        headline_usd(19.99)


def test_low_balance_alert_never_overstates(signed_in, member, fund):
    backdate_signup(member, 600)
    fund(member, usd=1)
    services.use_credits(user=member, amount_micros=500_001, reference="r1")
    html = signed_in.get(reverse("billing:dashboard")).content.decode()
    assert "Low balance: $0.49 available." in html  # $0.499999, not "$0.50"


def test_offer_ended_with_credit_is_not_told_to_add_credit(signed_in, member, fund):
    backdate_signup(member, 600)
    fund(member, usd=10)
    html = signed_in.get(reverse("onboarding:onboarding")).content.decode()
    assert "data-ended-has-credit" in html and "your calls keep working" in html
    assert "Add credit to keep calling the API" not in html
    pane = html[html.index('id="offer"'):html.index('id="celebration"')]
    assert "Buy credits" not in pane and "Go to the dashboard" in pane


def test_offer_ended_without_credit_still_says_how_to_add_it(signed_in, member):
    backdate_signup(member, 600)
    html = signed_in.get(reverse("onboarding:onboarding")).content.decode()
    assert "Add credit to keep calling the API" in html


def test_api_402_message_carries_the_link_to_buy_credits(client, member):
    backdate_signup(member, 600)
    from accounts.services import create_api_key
    _key, secret = create_api_key(user=member, name="ci")
    response = client.post("/v1/chat/completions", {"model": "demo-small", "messages": [
        {"role": "user", "content": "hi"}]}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 402
    message = response.json()["error"]["message"]
    assert message.endswith("Buy credits at http://testserver/billing/buy/")


def test_usage_page_groups_by_day_model_and_key_with_exact_costs(signed_in, member, make_user):
    key = ApiKey.objects.get(user=member)
    for n, (days_ago, model, cost, with_key) in enumerate([
        (0, "demo-small", 1_500_000, True), (0, "demo-small", 11, True),
        (0, "demo-large", 250_000, False), (2, "demo-small", 7, True), (40, "demo-large", 9, True),
    ]):
        record = make_usage(member, model_id=model, cost_micros=cost, days_ago=days_ago, n=n)
        if with_key:
            record.api_key = key
            record.save(update_fields=["api_key"])
    make_usage(make_user("other@example.com"), cost_micros=999_999)
    html = signed_in.get(reverse("billing:usage")).content.decode()
    rows = html[html.index("data-usage-rows"):]
    assert rows.count("<tr>") == 1 + 3  # today's two groups and two days ago; day 40 is outside
    assert "$1.500011" in rows and "Web playground" in rows and key.masked in rows
    assert "data-usage-total>$1.750018<" in html
    assert '<svg class="chart chart-wide"' in html
    by_model = signed_in.get(reverse("billing:usage"), {"group": "model"}).content.decode()
    assert by_model[by_model.index("data-usage-rows"):].count("<tr>") == 1 + 2
    wide = signed_in.get(reverse("billing:usage"), {
        "start": (timezone.now().date() - dt.timedelta(days=60)).isoformat()}).content.decode()
    assert "$1.750027" in wide


def test_usage_page_refuses_a_backwards_or_malformed_range_without_a_500(signed_in):
    response = signed_in.get(reverse("billing:usage"), {"start": "2025-05-02", "end": "2025-05-01"})
    assert response.status_code == 400
    assert "The start date is after the end date." in response.content.decode()
    response = signed_in.get(reverse("billing:usage"), {"start": "yesterday"})
    assert response.status_code == 400
    assert signed_in.get(reverse("billing:usage"), {"start": "2020-01-01"}).status_code == 400


def test_usage_csv_is_exact_and_formula_safe(signed_in, member):
    from accounts.services import create_api_key
    key, _ = create_api_key(user=member, name="=HYPERLINK(\"http://evil\")")
    record = make_usage(member, cost_micros=2_459)
    record.api_key = key
    record.save(update_fields=["api_key"])
    response = signed_in.get(reverse("billing:usage_csv"), {"group": "key"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["api_key", "requests", "prompt_tokens", "completion_tokens", "cost_usd"]
    assert rows[1][0].startswith("'=HYPERLINK")
    assert rows[1][1:] == ["1", "12", "30", "0.002459"]


def test_usage_pages_need_a_login(client):
    for name in ("billing:usage", "billing:usage_csv"):
        assert client.get(reverse(name)).status_code == 302


def test_docs_page_has_the_quickstart_errors_and_headers_and_the_nav_links_it(client):
    html = client.get("/docs/").content.decode()
    for text in ('"stream": true', "from openai import OpenAI", 'import OpenAI from "openai"',
                 "base_url=", "baseURL:", "Authorization: Bearer", "insufficient_credits",
                 "missing_api_key", "model_not_found", "rate_limit_exceeded", "Retry-After",
                 "X-Credits-Balance", "X-Credits-Charged", "usage.cost", "/billing/buy/"):
        assert text in html, text
    assert html.index("curl http") < html.index("curl -N")  # without streaming first
    assert re.search(r'<a href="/docs/"[^>]*>Docs</a>', client.get("/").content.decode())


def test_api_reference_shows_real_examples_not_placeholder_strings(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    examples = body.get("examples") or {}
    assert examples, body
    value = next(iter(examples.values()))["value"]
    assert value["model"] == "demo-small" and value["messages"][0]["content"]


def test_claimed_dashboard_shows_headline_and_exact(signed_in, member):
    record_first_token(user_id=member.pk)
    services.use_credits(user=member, amount_micros=11, reference="r1")
    html = signed_in.get(reverse("billing:dashboard")).content.decode()
    assert 'data-balance title="Exactly $19.999989">$19.99<' in html
