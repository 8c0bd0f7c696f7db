"""The promotion metrics (credits.promotion.metrics) against a hand-built cohort with known
answers, and the admin page that shows them."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from credits import services
from credits.models import (
    CreditGrant,
    GrantKind,
    Promotion,
    PromotionAssignment,
    PromotionVariant,
)
from credits.promotion.metrics import percentile_cont, promotion_metrics
from inference.services import record_first_token
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.django_db

MARCH_10 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def cohort(make_user):
    """Variant A ($20 within 180 s): a1 +30 s, a2 +100 s, a3 +200 s (late), a4 never.
    Variant B ($10 within 60 s): b1 +60 s, b2 +61 s (late). u1 has no assignment (settings,
    +5 s). o1 signed up in February (outside the range)."""
    promotion = Promotion.objects.create(
        name="Metrics", active_from=MARCH_10 - dt.timedelta(days=30),
        amount_micros=20 * USD, window_seconds=180, expiry_days=30)
    a = PromotionVariant.objects.create(promotion=promotion, name="A", weight=1)
    b = PromotionVariant.objects.create(promotion=promotion, name="B", weight=1,
                                        amount_micros=10 * USD, window_seconds=60)
    users = {}

    def sign_up(name, variant, joined=MARCH_10, first_token_after=None):
        user = make_user(f"{name}@example.com")
        User.objects.filter(pk=user.pk).update(date_joined=joined)
        if variant is None:
            PromotionAssignment.objects.filter(user=user).delete()
        else:
            PromotionAssignment.objects.update_or_create(
                user=user, defaults={"promotion": promotion, "variant": variant,
                                     "assigned_at": joined})
        if first_token_after is not None:
            record_first_token(user_id=user.pk,
                               at=joined + dt.timedelta(seconds=first_token_after))
        user.refresh_from_db()
        users[name] = user
        return user

    sign_up("a1", a, first_token_after=30)
    sign_up("a2", a, first_token_after=100)
    sign_up("a3", a, first_token_after=200)
    sign_up("a4", a)
    sign_up("b1", b, first_token_after=60)
    sign_up("b2", b, first_token_after=61)
    sign_up("u1", None, first_token_after=5)
    sign_up("o1", a, joined=dt.datetime(2026, 2, 1, tzinfo=dt.UTC), first_token_after=10)

    base = timezone.now()
    later, latest = base + dt.timedelta(hours=1), base + dt.timedelta(hours=2)
    promo = {n: CreditGrant.objects.filter(user=users[n], kind=GrantKind.PROMOTIONAL).first()
             for n in users}
    # a1 spends all $20, then buys credit: ran out, retained.
    services.use_credits(user=users["a1"], amount_micros=20 * USD, now=later)
    services.add_credit(user=users["a1"], amount_micros=10 * USD, kind=GrantKind.PURCHASED,
                        now=latest)
    # a2 spends $5; the other $15 expires: ran out, not retained.
    services.use_credits(user=users["a2"], amount_micros=5 * USD, now=base)
    services.change_grant_expiry(grant=promo["a2"], expires_at=later, reason="test", now=later)
    # b1 had bought $5 before; the $10 promotion is voided; a paid call after: retained.
    services.add_credit(user=users["b1"], amount_micros=5 * USD, kind=GrantKind.PURCHASED,
                        now=base)
    services.void_grant(grant=promo["b1"], reason="test", now=later)
    services.use_credits(user=users["b1"], amount_micros=USD, now=latest)
    assert_books_balance()
    return {"promotion": promotion, "a": a, "b": b, "users": users}


def by_label(rows):
    return {row.label: row for row in rows}


def test_metrics_per_variant_match_the_hand_counted_answers(cohort):
    rows = by_label(promotion_metrics(start=dt.date(2026, 3, 1), end=dt.date(2026, 3, 31)))
    a, b = rows["Metrics / A"], rows["Metrics / B"]
    assert (a.signups, a.first_token_in_window, a.first_token_any) == (4, 2, 3)
    assert a.first_token_share == 0.5
    assert a.median_seconds_to_first_token == pytest.approx(100)
    assert a.p90_seconds_to_first_token == pytest.approx(180)  # 100 + 0.8 * (200 - 100)
    assert (a.granted_micros, a.used_micros, a.expired_micros, a.voided_micros) == (
        40 * USD, 25 * USD, 15 * USD, 0)
    assert a.outstanding_micros == 0 and a.utilization == 0.625
    assert (a.ran_out, a.retained) == (2, 1)

    assert (b.signups, b.first_token_in_window) == (2, 1)
    assert b.median_seconds_to_first_token == pytest.approx(60.5)
    assert b.p90_seconds_to_first_token == pytest.approx(60.9)
    assert (b.granted_micros, b.used_micros, b.voided_micros) == (10 * USD, 0, 10 * USD)
    assert (b.ran_out, b.retained, b.retention) == (1, 1, 1.0)

    settings_row = rows["No promotion assigned (PROMOTION_* settings)"]
    assert (settings_row.signups, settings_row.first_token_in_window) == (1, 1)
    assert settings_row.granted_micros == 20 * USD and settings_row.ran_out == 0


def test_the_date_range_picks_the_cohort(cohort):
    rows = by_label(promotion_metrics(start=dt.date(2026, 2, 1), end=dt.date(2026, 2, 1)))
    assert rows["Metrics / A"].signups == 1 and rows["Metrics / A"].granted_micros == 20 * USD
    assert "Metrics / B" not in rows
    assert promotion_metrics(start=dt.date(2025, 1, 1), end=dt.date(2025, 1, 2)) == []


def test_metrics_can_be_limited_to_one_promotion(cohort):
    rows = promotion_metrics(start=dt.date(2026, 3, 1), end=dt.date(2026, 3, 31),
                             promotion_id=cohort["promotion"].pk)
    assert sorted(r.label for r in rows) == ["Metrics / A", "Metrics / B"]


def test_percentile_matches_postgres_percentile_cont():
    assert percentile_cont([], 0.5) is None
    assert percentile_cont([7.0], 0.9) == 7.0
    assert percentile_cont([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile_cont([30.0, 100.0, 200.0], 0.9) == pytest.approx(180.0)


def test_metrics_page_table_charts_and_csv(client, support, cohort):
    client.force_login(support)
    url = reverse("admin:credits_promotion_metrics")
    response = client.get(url, {"start": "2026-03-01", "end": "2026-03-31"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "Metrics / A" in body and "50.0%" in body and "$25.00" in body
    assert "Cost of the promotion" in body
    csv = client.get(url, {"start": "2026-03-01", "end": "2026-03-31", "format": "csv"})
    assert csv["Content-Type"] == "text/csv"
    lines = csv.content.decode().splitlines()
    assert lines[0].startswith("promotion / variant,window seconds,sign-ups")
    row_a = next(line for line in lines if line.startswith("Metrics / A"))
    assert ",4,2,50.0,100.0,180.0,40.000000,25.000000,15.000000,0.000000,0.000000,62.5,2,1,50.0" \
        in row_a


def test_metrics_page_is_linked_from_the_admin_index(client, support):
    client.force_login(support)
    body = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:credits_promotion_metrics") in body


def test_metrics_page_needs_view_permission(client, bare_staff):
    client.force_login(bare_staff)
    assert client.get(reverse("admin:credits_promotion_metrics")).status_code == 403
