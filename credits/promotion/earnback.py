"""What each promotion earns back, per promotion and variant, over a sign-up cohort.

Selectors only (reads), aggregated in the database: five grouped queries whatever the
cohort's size (plus three for the referrals row) (bench/metrics.py times them on 100,000 users).

- promotional credit granted, used (spent on calls, or taken back), expired;
- conversion: users whose first purchase came within 7 and 30 days of signing up;
- revenue: what the cohort's purchases (PURCHASED grants: the ledger's record of every
  credited purchase) brought in within 30 days of signing up;
- promotional cost per paying user (credit used / users who paid within 30 days);
- payback: revenue ÷ promotional credit used;
- retention after the promotional credit ran out: of the users whose promotional credit is
  all gone, those who bought credit or paid for a call on other credit afterwards.

The referral programme is one more row: the cohort's referred users, the REFERRAL grants
of their referrals (referrer's and welcome bonus) as its credit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce

from accounts.models import User
from credits import money
from credits.models import CreditGrant, EntryType, GrantKind, LedgerEntry, PromotionVariant, Referral

GroupKey = tuple[int | None, int | None]
REFERRALS: GroupKey = (-1, -1)  # the referral programme's row

SPENDING_TYPES = [EntryType.USAGE, EntryType.CAPTURE, EntryType.ADJUSTMENT, EntryType.REFUND]
PAID_CALL_TYPES = [EntryType.USAGE, EntryType.CAPTURE]


@dataclass
class EarnBack:
    promotion_id: int | None
    variant_id: int | None
    label: str
    signups: int = 0
    granted_micros: int = 0
    used_micros: int = 0
    expired_micros: int = 0
    paying_7d: int = 0
    paying_30d: int = 0
    revenue_30d_micros: int = 0
    ran_out: int = 0
    retained: int = 0

    @property
    def conversion_7d(self) -> float | None:
        return self.paying_7d / self.signups if self.signups else None

    @property
    def conversion_30d(self) -> float | None:
        return self.paying_30d / self.signups if self.signups else None

    @property
    def cost_per_paying_user_micros(self) -> int | None:
        return self.used_micros // self.paying_30d if self.paying_30d else None

    @property
    def payback(self) -> float | None:
        """Revenue within 30 days per dollar of promotional credit used."""
        return self.revenue_30d_micros / self.used_micros if self.used_micros else None

    @property
    def retention(self) -> float | None:
        return self.retained / self.ran_out if self.ran_out else None

    def as_row(self) -> dict[str, str]:
        """The CSV's columns: USD with six decimals, shares as fractions."""

        def frac(value: float | None) -> str:
            return "" if value is None else f"{value:.4f}"

        cost = self.cost_per_paying_user_micros
        return {
            "promotion / variant": self.label,
            "promotion_id": "" if self.promotion_id is None else str(self.promotion_id),
            "variant_id": "" if self.variant_id is None else str(self.variant_id),
            "signups": str(self.signups),
            "promo_granted_usd": money.format_usd(self.granted_micros),
            "promo_used_usd": money.format_usd(self.used_micros),
            "promo_expired_usd": money.format_usd(self.expired_micros),
            "paying_within_7d": str(self.paying_7d),
            "conversion_7d": frac(self.conversion_7d),
            "paying_within_30d": str(self.paying_30d),
            "conversion_30d": frac(self.conversion_30d),
            "revenue_30d_usd": money.format_usd(self.revenue_30d_micros),
            "promo_cost_per_paying_user_usd": "" if cost is None else money.format_usd(cost),
            "payback": frac(self.payback),
            "ran_out_of_promo_credit": str(self.ran_out),
            "retained_after_running_out": str(self.retained),
            "retention": frac(self.retention),
        }


def _bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    return (dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC))


def earnback_metrics(*, start: dt.date, end: dt.date,
                     promotion_id: int | None = None) -> list[EarnBack]:
    """One row per (promotion, variant) of the users who signed up from `start` to `end`
    (inclusive, UTC days), and one for the referral programme. Five grouped queries (and up
    to three for the referrals row), in one read transaction."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")  # as credits.promotion.metrics
        return _earnback(start=start, end=end, promotion_id=promotion_id)


def _earnback(*, start: dt.date, end: dt.date, promotion_id: int | None) -> list[EarnBack]:
    since, until = _bounds(start, end)
    cohort = User.objects.filter(date_joined__gte=since, date_joined__lt=until)
    if promotion_id is not None:
        cohort = cohort.filter(promotion_assignment__promotion_id=promotion_id)
    pid, vid = "promotion_assignment__promotion_id", "promotion_assignment__variant_id"
    rows = _labelled_rows(promotion_id)

    def row(key: GroupKey) -> EarnBack:
        if key not in rows:
            rows[key] = EarnBack(promotion_id=key[0], variant_id=key[1], label=(
                "No promotion assigned" if key[0] is None else f"Promotion #{key[0]}"))
        return rows[key]

    # 1. Sign-ups (one query), then conversion and revenue: one row per paying user of the
    # cohort, from their PURCHASED grants (one query), bucketed here.
    for r in cohort.order_by().values(pid, vid).annotate(signups=Count("pk")):
        row((r[pid], r[vid])).signups = r["signups"]
    upid, uvid = f"user__{pid}", f"user__{vid}"
    for key, first_paid, joined, revenue in _payers(cohort, upid, uvid):
        _add_payer(row(key), first_paid, joined, revenue)

    # 2. Promotional credit, by what moved it (one query over the entries).
    def moved(*types) -> Coalesce:
        return Coalesce(Sum("amount_micros", filter=Q(entry_type__in=types)), 0)

    for r in (LedgerEntry.objects.filter(grant__kind=GrantKind.PROMOTIONAL,
                                         user__in=cohort.values("pk"))
              .order_by().values(upid, uvid)
              .annotate(granted=moved(EntryType.GRANT), used=moved(*SPENDING_TYPES),
                        expired=moved(EntryType.EXPIRY))):
        target = row((r[upid], r[uvid]))
        target.granted_micros, target.used_micros = r["granted"], -r["used"]
        target.expired_micros = -r["expired"]

    # 3. Retention after the promotional credit ran out (one query).
    for r in _ran_out(CreditGrant.objects.filter(kind=GrantKind.PROMOTIONAL,
                                                 user__in=cohort.values("pk"))
                      ).values(upid, uvid).annotate(
            ran_out=Count("user_id", distinct=True),
            retained=Count("user_id", distinct=True, filter=Q(came_back=True))):
        target = row((r[upid], r[uvid]))
        target.ran_out, target.retained = r["ran_out"], r["retained"]

    out = [r for r in rows.values() if r.signups or r.granted_micros]
    referred = _referral_row(cohort)
    if referred.signups:
        out.append(referred)
    return out


def _ran_out(grants):
    """Grants at zero, when they ran out, and whether their user came back afterwards."""
    ran_out_at = Subquery(
        LedgerEntry.objects.filter(grant_id=OuterRef("pk"), amount_micros__lt=0)
        .order_by().values("grant_id").annotate(last=Max("created_at")).values("last"),
        output_field=DateTimeField())
    bought = CreditGrant.objects.filter(user_id=OuterRef("user_id"), kind=GrantKind.PURCHASED,
                                        granted_at__gte=OuterRef("ran_out_at"))
    paid_call = LedgerEntry.objects.filter(
        user_id=OuterRef("user_id"), entry_type__in=PAID_CALL_TYPES, amount_micros__lt=0,
        created_at__gte=OuterRef("ran_out_at"),
    ).exclude(grant__kind__in=[GrantKind.PROMOTIONAL, GrantKind.REFERRAL])
    return (grants.filter(remaining_micros=0).annotate(ran_out_at=ran_out_at)
            .annotate(came_back=Exists(bought) | Exists(paid_call)).order_by())


def _referral_row(cohort) -> EarnBack:
    """The cohort's referred users and their referrals' REFERRAL grants (two queries)."""
    result = EarnBack(promotion_id=None, variant_id=None, label="Referral programme")
    referred = cohort.filter(referral__isnull=False)
    result.signups = referred.count()
    if not result.signups:
        return result
    for _key, first_paid, joined, revenue in _payers(referred, None, None):
        _add_payer(result, first_paid, joined, revenue)
    referrals = Referral.objects.filter(referred__in=referred.values("pk"))
    grant_ids = Q(grant_id__in=referrals.values("referrer_grant_id")) | Q(
        grant_id__in=referrals.values("referred_grant_id"))
    moved = LedgerEntry.objects.filter(grant_ids).aggregate(
        granted=Coalesce(Sum("amount_micros", filter=Q(entry_type=EntryType.GRANT)), 0),
        used=Coalesce(Sum("amount_micros", filter=Q(entry_type__in=SPENDING_TYPES)), 0),
        expired=Coalesce(Sum("amount_micros", filter=Q(entry_type=EntryType.EXPIRY)), 0))
    result.granted_micros, result.used_micros = moved["granted"], -moved["used"]
    result.expired_micros = -moved["expired"]
    return result


def _payers(cohort, upid: str | None, uvid: str | None):
    """(group key, first purchase, sign-up, revenue within 30 days) per paying user."""
    fields = ["user_id", "user__date_joined"] + ([upid, uvid] if upid else [])
    rows = (CreditGrant.objects.filter(kind=GrantKind.PURCHASED, user__in=cohort.values("pk"))
            .order_by().values(*fields)
            .annotate(first=Min("granted_at"), revenue=Coalesce(Sum(
                "amount_micros", filter=Q(granted_at__lte=F("user__date_joined")
                                          + dt.timedelta(days=30))), 0)))
    for r in rows.iterator():
        key = (r[upid], r[uvid]) if upid else REFERRALS
        yield key, r["first"], r["user__date_joined"], r["revenue"]


def _add_payer(target: EarnBack, first_paid: dt.datetime, joined: dt.datetime,
               revenue: int) -> None:
    if first_paid <= joined + dt.timedelta(days=7):
        target.paying_7d += 1
    if first_paid <= joined + dt.timedelta(days=30):
        target.paying_30d += 1
    target.revenue_30d_micros += revenue


def _labelled_rows(promotion_id: int | None) -> dict[GroupKey, EarnBack]:
    variants = PromotionVariant.objects.select_related("promotion").order_by("promotion_id", "id")
    if promotion_id is not None:
        variants = variants.filter(promotion_id=promotion_id)
    return {(v.promotion_id, v.pk): EarnBack(promotion_id=v.promotion_id, variant_id=v.pk,
                                             label=f"{v.promotion.name} / {v.name}")
            for v in variants}
