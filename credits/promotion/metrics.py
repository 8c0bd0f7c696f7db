"""The promotion's success metrics, per promotion variant, for a sign-up cohort.

Selectors only (reads). Everything is aggregated in the database, a handful of
grouped queries whatever the number of users: sign-ups and first tokens in the
window, the median and p90 time from registration to the first token,
promotional credit granted / used / expired / voided, and retention after the
promotional credit ran out. The cohort is the customers (staff accounts are not sign-ups)
who signed up in the date range; their credit is counted whenever it moved. The credit
columns count only the grants the promotion made (not a staff member's goodwill grant of
promotional kind), and "used" is what calls spent (a staff adjustment that took promotional
credit back counts with the voided credit, not as use). `daily_trend` gives the same
cohort day by day.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    Count,
    DateTimeField,
    Exists,
    F,
    FloatField,
    Func,
    Max,
    OuterRef,
    Q,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce, TruncDate

from accounts.models import User
from credits import money
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    PromotionVariant,
)
from credits.models.promotions import FIRST_TOKEN_PROMOTION_KEY, settings_terms, terms_for

GroupKey = tuple[int | None, int | None]  # (promotion id, variant id)

# What calls spent of the promotion's credit; credit taken away otherwise (a void, a staff
# adjustment, a take-back) counts as removed ("voided").
SPENDING_TYPES = [EntryType.USAGE, EntryType.CAPTURE]
REMOVING_TYPES = [EntryType.VOID, EntryType.ADJUSTMENT, EntryType.REFUND]
PAID_CALL_TYPES = [EntryType.USAGE, EntryType.CAPTURE]


def customers():
    """Sign-ups: staff accounts are not."""
    return User.objects.filter(is_staff=False, is_superuser=False)


def promotion_grants_q(prefix: str = "") -> Q:
    """The grants the first-token promotion made (its award's key): not a staff member's
    grant of promotional kind."""
    return Q(**{f"{prefix}kind": GrantKind.PROMOTIONAL,
                f"{prefix}idempotency_key": FIRST_TOKEN_PROMOTION_KEY})


class SecondsBetween(Func):
    """Seconds from the second expression to the first, as a float."""

    output_field = FloatField()

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection,
                           template="EXTRACT(EPOCH FROM (%(expressions)s))::double precision",
                           arg_joiner=" - ", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection,
                           template="((julianday(%(expressions)s)) * 86400.0)",
                           arg_joiner=") - julianday(", **extra)


class PercentileCont(Aggregate):
    """PostgreSQL's percentile_cont (linear interpolation between ranks)."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, *, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def percentile_cont(sorted_values: list[float], fraction: float) -> float | None:
    """The same interpolation as PostgreSQL's percentile_cont, for SQLite."""
    if not sorted_values:
        return None
    rank = fraction * (len(sorted_values) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class VariantMetrics:
    promotion_id: int | None
    variant_id: int | None
    label: str
    window_seconds: int
    signups: int = 0
    first_token_in_window: int = 0
    first_token_any: int = 0
    median_seconds_to_first_token: float | None = None
    p90_seconds_to_first_token: float | None = None
    granted_micros: int = 0
    used_micros: int = 0
    expired_micros: int = 0
    voided_micros: int = 0
    ran_out: int = 0
    retained: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def first_token_share(self) -> float | None:
        return self.first_token_in_window / self.signups if self.signups else None

    @property
    def cost_micros(self) -> int:
        """What the promotion cost: the promotional credit that was spent."""
        return self.used_micros

    @property
    def outstanding_micros(self) -> int:
        return self.granted_micros - self.used_micros - self.expired_micros - self.voided_micros

    @property
    def utilization(self) -> float | None:
        return self.used_micros / self.granted_micros if self.granted_micros else None

    @property
    def retention(self) -> float | None:
        return self.retained / self.ran_out if self.ran_out else None

    def as_row(self) -> dict[str, str]:
        def pct(value: float | None) -> str:
            return "" if value is None else f"{value * 100:.1f}"

        def secs(value: float | None) -> str:
            return "" if value is None else f"{value:.1f}"

        return {
            "promotion / variant": self.label,
            "window seconds": str(self.window_seconds),
            "sign-ups": str(self.signups),
            "first token in window": str(self.first_token_in_window),
            "first token in window %": pct(self.first_token_share),
            "median seconds to first token": secs(self.median_seconds_to_first_token),
            "p90 seconds to first token": secs(self.p90_seconds_to_first_token),
            "promotional granted": money.format_usd(self.granted_micros),
            "promotional used": money.format_usd(self.used_micros),
            "promotional expired": money.format_usd(self.expired_micros),
            "promotional voided or taken back": money.format_usd(self.voided_micros),
            "promotional outstanding": money.format_usd(self.outstanding_micros),
            "utilization %": pct(self.utilization),
            "ran out of promotional credit": str(self.ran_out),
            "retained after running out": str(self.retained),
            "retention %": pct(self.retention),
        }


def _day_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00 UTC, day after end 00:00 UTC): the range is inclusive of `end`."""
    return (dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC))


def promotion_metrics(*, start: dt.date, end: dt.date,
                      promotion_id: int | None = None) -> list[VariantMetrics]:
    """One row per (promotion, variant) of the users who signed up from `start` to
    `end` (inclusive, UTC days). Users with no assignment form one row of their own.
    Five queries, in one transaction."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # The planner prices the retention subqueries high and JIT-compiles them:
            # ~0.5 s of compiling for a ~50 ms query on 100,000 users (bench/metrics.py).
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
        return _promotion_metrics(start=start, end=end, promotion_id=promotion_id)


def _promotion_metrics(*, start: dt.date, end: dt.date,
                       promotion_id: int | None) -> list[VariantMetrics]:
    since, until = _day_bounds(start, end)
    cohort = customers().filter(date_joined__gte=since, date_joined__lt=until)
    if promotion_id is not None:
        cohort = cohort.filter(promotion_assignment__promotion_id=promotion_id)
    pid, vid = "promotion_assignment__promotion_id", "promotion_assignment__variant_id"

    rows = _rows_for_variants(promotion_id)

    # Sign-ups and first tokens within each variant's own window (one query).
    in_window = Q(first_token_at__isnull=False) & (
        _window_condition(rows, prefix="")
    )
    for r in (cohort.order_by().values(pid, vid)
              .annotate(signups=Count("pk"), in_window=Count("pk", filter=in_window),
                        any_token=Count("pk", filter=Q(first_token_at__isnull=False)))):
        row = _row(rows, r[pid], r[vid])
        row.signups, row.first_token_in_window = r["signups"], r["in_window"]
        row.first_token_any = r["any_token"]

    _time_to_first_token(cohort, rows, pid, vid)

    # Promotional credit, by what moved it (one query over the entries).
    entries = LedgerEntry.objects.filter(promotion_grants_q("grant__"),
                                         user__in=cohort.values("pk"))
    upid, uvid = f"user__{pid}", f"user__{vid}"

    def moved(*types) -> Coalesce:
        return Coalesce(Sum("amount_micros", filter=Q(entry_type__in=types)), 0)

    for r in (entries.order_by().values(upid, uvid)
              .annotate(granted=moved(EntryType.GRANT), used=moved(*SPENDING_TYPES),
                        expired=moved(EntryType.EXPIRY), voided=moved(*REMOVING_TYPES))):
        row = _row(rows, r[upid], r[uvid])
        row.granted_micros, row.used_micros = r["granted"], -r["used"]
        row.expired_micros, row.voided_micros = -r["expired"], -r["voided"]

    _retention(cohort, rows, upid, uvid)
    return [row for row in rows.values() if row.signups or row.granted_micros]


def _rows_for_variants(promotion_id: int | None) -> dict[GroupKey, VariantMetrics]:
    variants = PromotionVariant.objects.select_related("promotion").order_by(
        "promotion_id", "id")
    if promotion_id is not None:
        variants = variants.filter(promotion_id=promotion_id)
    rows: dict[GroupKey, VariantMetrics] = {}
    for variant in variants:
        terms = terms_for(variant.promotion, variant)
        rows[(variant.promotion_id, variant.pk)] = VariantMetrics(
            promotion_id=variant.promotion_id, variant_id=variant.pk,
            label=f"{variant.promotion.name} / {variant.name}",
            window_seconds=terms.window_seconds,
        )
    return rows


def _row(rows: dict[GroupKey, VariantMetrics], promotion_id, variant_id) -> VariantMetrics:
    key = (promotion_id, variant_id)
    if key not in rows:
        label = "No promotion assigned (PROMOTION_* settings)" if promotion_id is None else (
            f"Promotion #{promotion_id} (no variant)")
        rows[key] = VariantMetrics(promotion_id=promotion_id, variant_id=variant_id, label=label,
                                   window_seconds=settings_terms().window_seconds)
    return rows[key]


def _window_condition(rows: dict[GroupKey, VariantMetrics], *, prefix: str) -> Q:
    """first token within the window of the user's own variant (settings when none)."""
    vid = f"{prefix}promotion_assignment__variant_id"

    def within(seconds: int) -> Q:
        return Q(**{f"{prefix}first_token_at__lte":
                    F(f"{prefix}date_joined") + dt.timedelta(seconds=seconds)})

    condition = Q(**{f"{vid}__isnull": True}) & within(settings_terms().window_seconds)
    by_window: dict[int, list[int]] = defaultdict(list)
    for (_, variant_id), row in rows.items():
        if variant_id is not None:
            by_window[row.window_seconds].append(variant_id)
    for seconds, variant_ids in by_window.items():
        condition |= Q(**{f"{vid}__in": variant_ids}) & within(seconds)
    return condition


def _time_to_first_token(cohort, rows, pid: str, vid: str) -> None:
    seconds = SecondsBetween(F("first_token_at"), F("date_joined"))
    started = cohort.filter(first_token_at__isnull=False).order_by()
    if connection.vendor == "postgresql":
        for r in started.values(pid, vid).annotate(
            median=PercentileCont(seconds, fraction=0.5),
            p90=PercentileCont(seconds, fraction=0.9),
        ):
            row = _row(rows, r[pid], r[vid])
            row.median_seconds_to_first_token, row.p90_seconds_to_first_token = r["median"], r["p90"]
        return
    # SQLite (development) has no percentile aggregate: sort the seconds here.
    values: dict[GroupKey, list[float]] = defaultdict(list)
    for p, v, s in started.annotate(s=seconds).values_list(pid, vid, "s"):
        values[(p, v)].append(s)
    for key, secs in values.items():
        secs.sort()
        row = _row(rows, *key)
        row.median_seconds_to_first_token = percentile_cont(secs, 0.5)
        row.p90_seconds_to_first_token = percentile_cont(secs, 0.9)


def _retention(cohort, rows, upid: str, uvid: str) -> None:
    """Of the users whose promotional credit ran out (the grant is at zero), how
    many bought credit or made a paid call on other credit afterwards."""
    ran_out_at = Subquery(
        LedgerEntry.objects.filter(grant_id=OuterRef("pk"), amount_micros__lt=0)
        .order_by().values("grant_id").annotate(last=Max("created_at")).values("last"),
        output_field=DateTimeField(),
    )
    bought = CreditGrant.objects.filter(
        user_id=OuterRef("user_id"), kind=GrantKind.PURCHASED, granted_at__gte=OuterRef("ran_out_at"))
    paid_call = LedgerEntry.objects.filter(
        user_id=OuterRef("user_id"), entry_type__in=PAID_CALL_TYPES, amount_micros__lt=0,
        created_at__gte=OuterRef("ran_out_at"),
    ).exclude(promotion_grants_q("grant__"))
    grants = (
        CreditGrant.objects.filter(promotion_grants_q(), remaining_micros=0,
                                   user__in=cohort.values("pk"))
        .annotate(ran_out_at=ran_out_at)
        .annotate(came_back=Exists(bought) | Exists(paid_call))
        .order_by()
    )
    for r in grants.values(upid, uvid).annotate(
        ran_out=Count("user_id", distinct=True),
        retained=Count("user_id", distinct=True, filter=Q(came_back=True)),
    ):
        row = _row(rows, r[upid], r[uvid])
        row.ran_out, row.retained = r["ran_out"], r["retained"]


@dataclass(frozen=True)
class TrendDay:
    day: dt.date
    signups: int
    first_tokens_in_window: int
    granted_micros: int  # promotion credit granted that day (to the whole cohort)
    used_micros: int  # promotion credit calls spent that day


def daily_trend(*, start: dt.date, end: dt.date,
                promotion_id: int | None = None) -> list[TrendDay]:
    """The cohort of `promotion_metrics`, one point per UTC day from `start` to `end`: who
    signed up that day and how many of them reached a first token in their window, and the
    promotion's credit granted and spent that day. Two grouped queries."""
    since, until = _day_bounds(start, end)
    cohort = customers().filter(date_joined__gte=since, date_joined__lt=until)
    if promotion_id is not None:
        cohort = cohort.filter(promotion_assignment__promotion_id=promotion_id)
    rows = _rows_for_variants(promotion_id)
    in_window = Q(first_token_at__isnull=False) & _window_condition(rows, prefix="")
    people = {r["day"]: r for r in (
        cohort.annotate(day=TruncDate("date_joined", tzinfo=dt.UTC)).order_by().values("day")
        .annotate(signups=Count("pk"), in_window=Count("pk", filter=in_window)))}
    credit = {r["day"]: r for r in (
        LedgerEntry.objects.filter(promotion_grants_q("grant__"), user__in=cohort.values("pk"),
                                   created_at__gte=since, created_at__lt=until)
        .annotate(day=TruncDate("created_at", tzinfo=dt.UTC)).order_by().values("day")
        .annotate(granted=Coalesce(Sum("amount_micros",
                                       filter=Q(entry_type=EntryType.GRANT)), 0),
                  used=Coalesce(Sum("amount_micros", filter=Q(entry_type__in=SPENDING_TYPES)),
                                0)))}
    days = []
    day = start
    while day <= end:
        p, c = people.get(day, {}), credit.get(day, {})
        days.append(TrendDay(day=day, signups=p.get("signups", 0),
                             first_tokens_in_window=p.get("in_window", 0),
                             granted_micros=c.get("granted", 0), used_micros=-c.get("used", 0)))
        day += dt.timedelta(days=1)
    return days


@dataclass(frozen=True)
class Today:
    """The console's front page: today's (UTC) numbers."""

    signups: int
    first_tokens_in_window: int
    promotional_outstanding_micros: int  # promotional credit customers can still spend


def today(*, now: dt.datetime) -> Today:
    """Customers who signed up today and who generated their first token today within their
    own window; the promotional credit outstanding now (unexpired, not voided, all users).
    Three queries."""
    start = dt.datetime.combine(now.astimezone(dt.UTC).date(), dt.time.min, tzinfo=dt.UTC)
    rows = _rows_for_variants(None)
    signups = customers().filter(date_joined__gte=start, date_joined__lte=now).count()
    first = customers().filter(first_token_at__gte=start, first_token_at__lte=now).filter(
        _window_condition(rows, prefix="")).count()
    outstanding = (CreditGrant.objects.filter(kind=GrantKind.PROMOTIONAL, voided_at__isnull=True,
                                              remaining_micros__gt=0)
                   .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
                   .aggregate(total=Coalesce(Sum("remaining_micros"), 0))["total"])
    return Today(signups=signups, first_tokens_in_window=first,
                 promotional_outstanding_micros=outstanding)
