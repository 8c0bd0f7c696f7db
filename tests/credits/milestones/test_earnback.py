"""What each promotion earns back, checked against a cohort built by hand."""

import csv
import datetime as dt
import io

import pytest
from django.utils import timezone

from accounts.models import User
from credits import services
from credits.models import GrantKind, Promotion, PromotionAssignment, PromotionVariant
from credits.promotion import referrals
from credits.promotion.earnback import earnback_metrics
from tests.books import USD

pytestmark = pytest.mark.django_db

DAY0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)


def at(days: float) -> dt.datetime:
    return DAY0 + dt.timedelta(days=days)


@pytest.fixture
def cohort(db):
    Promotion.objects.update(is_active=False)
    promotion = Promotion.objects.create(name="AB", active_from=at(-10), amount_micros=20 * USD)
    a = PromotionVariant.objects.create(promotion=promotion, name="A")
    b = PromotionVariant.objects.create(promotion=promotion, name="B")

    def user(email, variant):
        u = User.objects.create_user(email, "correct-horse-battery")
        User.objects.filter(pk=u.pk).update(date_joined=DAY0)
        PromotionAssignment.objects.update_or_create(
            user=u, defaults={"promotion": promotion, "variant": variant, "assigned_at": DAY0})
        return u

    def promo(u):
        services.add_credit(user=u, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                            expires_at=at(30), now=at(0.001))

    def purchase(u, usd, day):
        services.add_credit(user=u, amount_micros=usd * USD, kind=GrantKind.PURCHASED,
                            expires_at=None, now=at(day))

    u1, u2, u3, u4 = (user("u1@example.com", a), user("u2@example.com", a),
                      user("u3@example.com", b), user("u4@example.com", b))
    promo(u1)
    services.use_credits(user=u1, amount_micros=5 * USD, now=at(1))
    purchase(u1, 10, 3)  # pays within 7 days
    promo(u2)
    services.use_credits(user=u2, amount_micros=20 * USD, now=at(2))  # ran out
    purchase(u2, 30, 20)  # pays within 30 days, after running out: retained
    purchase(u3, 50, 40)  # pays, but after 30 days
    promo(u4)
    services.expire_credits(now=at(31))  # u1's $15 left and u4's $20 expire
    # Outside the cohort (the next day): never counted.
    other = user("late@example.com", a)
    User.objects.filter(pk=other.pk).update(date_joined=at(1))
    purchase(other, 99, 2)
    return promotion, a, b


def test_earnback_per_variant_matches_the_hand_built_cohort(cohort):
    promotion, _a, _b = cohort
    rows = {r.label: r for r in earnback_metrics(start=DAY0.date(), end=DAY0.date(),
                                                 promotion_id=promotion.pk)}
    ra, rb = rows["AB / A"], rows["AB / B"]
    assert (ra.signups, ra.granted_micros, ra.used_micros, ra.expired_micros) == (
        2, 40 * USD, 25 * USD, 15 * USD)
    assert (ra.paying_7d, ra.paying_30d, ra.revenue_30d_micros) == (1, 2, 40 * USD)
    assert ra.cost_per_paying_user_micros == 12_500_000
    assert ra.payback == pytest.approx(1.6)
    # u2 spent it all and bought after; u1's rest expired and they bought only before.
    assert (ra.ran_out, ra.retained) == (2, 1)
    assert (rb.signups, rb.granted_micros, rb.used_micros, rb.expired_micros) == (
        2, 20 * USD, 0, 20 * USD)
    assert (rb.paying_7d, rb.paying_30d, rb.revenue_30d_micros) == (0, 0, 0)
    assert rb.payback is None and rb.cost_per_paying_user_micros is None


def test_earnback_in_a_few_queries(cohort, django_assert_max_num_queries):
    # Five grouped reads, the variants' labels, the referrals' count (two more with referred
    # users), plus the transaction's SAVEPOINT, SET LOCAL jit and RELEASE.
    with django_assert_max_num_queries(10):
        earnback_metrics(start=DAY0.date(), end=DAY0.date())


def test_referral_row(db):
    host = User.objects.create_user("host@example.com", "correct-horse-battery")
    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=referrals.referral_code_for(user=host))
    services.add_credit(user=friend, amount_micros=10 * USD, kind=GrantKind.PURCHASED,
                        expires_at=None)
    referrals.settle_referral(referred=friend)
    today = timezone.now().date()
    (row,) = [r for r in earnback_metrics(start=today, end=today)
              if r.label == "Referral programme"]
    assert (row.signups, row.paying_7d, row.revenue_30d_micros, row.granted_micros) == (
        1, 1, 10 * USD, 20 * USD)


def test_earnback_page_and_csv(cohort, admin_client):
    page = admin_client.get("/admin/credits/tierlist/earnback/",
                            {"start": "2026-01-05", "end": "2026-01-05"})
    assert page.status_code == 200
    assert "AB / A" in page.content.decode() and "1.60x" in page.content.decode()
    metrics_page = admin_client.get("/admin/credits/promotion/metrics/")
    assert "/admin/credits/tierlist/earnback/" in metrics_page.content.decode()
    response = admin_client.get("/admin/credits/tierlist/earnback/",
                                {"start": "2026-01-05", "end": "2026-01-05", "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    row = next(r for r in rows if r["promotion / variant"] == "AB / A")
    assert row["revenue_30d_usd"] == "40.000000" and row["payback"] == "1.6000"
    assert row["promo_cost_per_paying_user_usd"] == "12.500000"
    bad = admin_client.get("/admin/credits/tierlist/earnback/",
                           {"start": "2026-02-01", "end": "2026-01-01"})
    assert bad.status_code == 200 and "after the end date" in bad.content.decode()
