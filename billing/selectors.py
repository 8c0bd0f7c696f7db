"""Reads for the billing pages: prices, alerts, history, usage and the spend chart's data."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import ApiKey, User
from billing.labels import date_label, datetime_label
from credits import money
from credits.models import EntryType, GrantKind, LedgerEntry
from credits.notices import low_balance_threshold_micros
from credits.selectors import UserCredits
from inference.models import AiModel, UsageRecord

EXPIRY_WARNING_DAYS = 3
USAGE_CHART_DAYS = 30


@dataclass(frozen=True)
class ModelPrice:
    id: str
    name: str
    input_price_per_million_micros: int
    output_price_per_million_micros: int
    context_length: int

    @property
    def input_display(self) -> str:
        return money.display_usd(self.input_price_per_million_micros)

    @property
    def output_display(self) -> str:
        return money.display_usd(self.output_price_per_million_micros)


def model_price_list(*, now: dt.datetime | None = None) -> list[ModelPrice]:
    """Active models with the price in effect now (models without a price are not callable)."""
    now = now or timezone.now()
    rows = []
    for model in AiModel.objects.active().prefetch_related("prices"):
        prices = [p for p in model.prices.all() if p.effective_from <= now]
        if not prices:
            continue
        price = max(prices, key=lambda p: p.effective_from)
        rows.append(ModelPrice(
            id=model.id,
            name=model.display_name or model.id,
            input_price_per_million_micros=price.input_price_per_million_micros,
            output_price_per_million_micros=price.output_price_per_million_micros,
            context_length=model.context_length,
        ))
    return rows


REFERENCE_MODEL = "demo-small"  # what the buy page's "≈ N tokens" lines are counted on


@dataclass(frozen=True)
class PackageOffer:
    package: object  # billing.models.CreditPackage
    estimates: list[tuple[str, str]]  # (model id, "16.6M" output tokens), reference model first


def tokens_label(tokens: int) -> str:
    """Rounded down, for people: 16_666_666 -> "16.6M", 850_000 -> "850K", 999 -> "999"."""
    if tokens >= 1_000_000:
        tenths = tokens // 100_000
        return f"{tenths // 10:,}M" if tenths % 10 == 0 or tenths >= 1000 else f"{tenths / 10:.1f}M"
    if tokens >= 1_000:
        return f"{tokens // 1_000}K"
    return str(tokens)


def output_tokens_for(amount_micros: int, price: ModelPrice) -> int:
    """Output tokens `amount_micros` pays for at the model's current price (no input counted)."""
    return amount_micros * money.TOKENS_PER_PRICE_UNIT // max(1, price.output_price_per_million_micros)


def package_offers(packages, *, now: dt.datetime | None = None) -> list[PackageOffer]:
    """Each package with the output tokens it buys on each priced model, at today's prices."""
    prices = sorted(model_price_list(now=now), key=lambda p: (p.id != REFERENCE_MODEL,
                                                             p.output_price_per_million_micros))
    return [
        PackageOffer(package=package, estimates=[
            (p.id, tokens_label(output_tokens_for(package.amount_micros, p))) for p in prices])
        for package in packages
    ]


@dataclass(frozen=True)
class Alert:
    level: str  # info, success, warn, danger
    code: str
    message: str
    action: str = ""  # "buy", "onboarding" or ""


def dashboard_alerts(credits: UserCredits, *, now: dt.datetime | None = None) -> list[Alert]:
    """The banners a user should see now, most urgent first."""
    now = now or timezone.now()
    alerts: list[Alert] = []
    usable = [g for g in credits.grants if g.is_usable_at(now) and g.remaining_micros > 0]
    # Credit locked until the email is verified has its own alert (onboarding/_verify_email_alert).
    awaiting = sum(g.remaining_micros for g in usable if g.awaiting_verification)
    if credits.balance_micros == 0 and not credits.promotion.eligible:
        message = (
            "Your balance is exhausted: API calls are refused until you add credit."
            if credits.grants
            else "You have no credit yet: API calls are refused until you add some."
        )
        alerts.append(Alert("danger", "exhausted", message, "buy"))
    elif (credits.balance_micros > 0 and credits.available_micros < low_balance_threshold_micros()
          and not awaiting):
        alerts.append(Alert(
            "warn", "low_balance",
            f"Low balance: {money.headline_usd(credits.available_micros)} available.", "buy"))
    soon = now + dt.timedelta(days=EXPIRY_WARNING_DAYS)
    expiring = [g for g in usable if g.expires_at and g.expires_at <= soon]
    if expiring:
        amount = sum(g.remaining_micros for g in expiring)
        first = min(g.expires_at for g in expiring)
        alerts.append(Alert(
            "warn", "expiring",
            f"{money.headline_usd(amount)} of credit expires within {EXPIRY_WARNING_DAYS} days "
            f"(first on {datetime_label(first)}). Use it before then.", ""))
    if credits.promotion.eligible:
        alerts.append(Alert(
            "info", "promotion_offer",
            f"{money.display_usd(credits.promotion.amount_micros, places=0)} free credit is waiting: "
            "generate your first token before the countdown ends.", "onboarding"))
    elif credits.promotional_micros - awaiting > 0:
        promo_expiry = min(
            (g.expires_at for g in usable if g.kind == GrantKind.PROMOTIONAL and g.expires_at
             and not g.awaiting_verification),
            default=None,
        )
        until = f" until {date_label(promo_expiry)}" if promo_expiry else ""
        alerts.append(Alert(
            "success", "promotion_available",
            f"You have {money.headline_usd(credits.promotional_micros - awaiting)} of promotional "
            f"credit to use{until}.", ""))
    return alerts


@dataclass(frozen=True)
class HistoryFilter:
    value: str             # the ?type= value ("" for the default view)
    label: str
    entry_types: tuple[str, ...]
    hint: str = ""


# Holds and releases are bookkeeping of calls in flight: the default view hides them and a
# metered call's CAPTURE reads as usage, like a plain USAGE debit. The CSV keeps every entry.
HISTORY_FILTERS = [
    HistoryFilter("", "All", tuple(t for t in EntryType.values
                                   if t not in (EntryType.HOLD, EntryType.RELEASE))),
    HistoryFilter("USAGE", "Usage", (EntryType.USAGE, EntryType.CAPTURE)),
    HistoryFilter("GRANT", "Credit added", (EntryType.GRANT,)),
    HistoryFilter("REFUND", "Refunds", (EntryType.REFUND,)),
    HistoryFilter("ADJUSTMENT", "Adjustments", (EntryType.ADJUSTMENT,)),
    HistoryFilter("EXPIRY", "Expired or voided", (EntryType.EXPIRY, EntryType.VOID, EntryType.EXPIRY_CHANGE)),
    HistoryFilter("HOLDS", "Show holds", tuple(EntryType.values),
                  "Every entry, with the holds calls place while they run and release after"),
]
ENTRY_LABELS = {EntryType.CAPTURE: "Usage"}


def history_filter(value: str) -> HistoryFilter:
    """The filter a ?type= value names; a raw entry type (HOLD, CAPTURE...) shows that type alone."""
    for f in HISTORY_FILTERS:
        if f.value == value:
            return f
    if value in EntryType.values:
        return HistoryFilter(value, EntryType(value).label, (value,))
    return HISTORY_FILTERS[0]


def history_entries(*, user: User, entry_type: str = "", every_entry: bool = False
                    ) -> QuerySet[LedgerEntry]:
    """The user's ledger entries, newest first, of the filter `entry_type` names (see
    HISTORY_FILTERS); `every_entry` ignores an empty filter and returns the whole ledger (CSV)."""
    qs = LedgerEntry.objects.filter(user=user).select_related("grant").order_by("-created_at", "-id")
    if every_entry and not entry_type:
        return qs
    return qs.filter(entry_type__in=history_filter(entry_type).entry_types)


# Rows per query of the history CSV: a page is read, written out and let go.
HISTORY_CSV_PAGE_ROWS = 500


def history_entries_page(*, user: User, entry_type: str = "", after: LedgerEntry | None = None
                         ) -> list[LedgerEntry]:
    """The next HISTORY_CSV_PAGE_ROWS entries of the history CSV (`history_entries` with
    `every_entry`), newest first, from just past `after`. Keyed on (created_at, id), the
    order itself, so a page boundary between entries of the same moment neither skips nor
    repeats one. The plain `created_at <=` bound is what lets PostgreSQL start the index
    scan at the boundary (it cannot from the OR alone, and would read every newer entry
    again on each page), so each page is one range read however deep into the ledger."""
    entries = history_entries(user=user, entry_type=entry_type, every_entry=True)
    if after is not None:
        entries = entries.filter(Q(created_at__lt=after.created_at)
                                 | Q(created_at=after.created_at, id__lt=after.pk),
                                 created_at__lte=after.created_at)
    return list(entries[:HISTORY_CSV_PAGE_ROWS])


USAGE_TYPES = (EntryType.USAGE, EntryType.CAPTURE)


@dataclass(frozen=True)
class HistoryRow:
    """One line of the money history: a ledger entry, or (calls > 0) one UTC day's usage."""

    created_at: dt.datetime
    entry_type: str
    amount_micros: int
    held_change_micros: int
    balance_after_micros: int
    description: str
    calls: int = 0
    day: dt.date | None = None

    @classmethod
    def of(cls, entry: LedgerEntry) -> HistoryRow:
        return cls(created_at=entry.created_at, entry_type=entry.entry_type,
                   amount_micros=entry.amount_micros, held_change_micros=entry.held_change_micros,
                   balance_after_micros=entry.balance_after_micros,
                   description=entry.customer_description)


def money_history(*, user: User, entry_type: str = "") -> list[HistoryRow] | QuerySet[LedgerEntry]:
    """What the history shows, newest first. The default view keeps every movement of money in
    and out (grants, purchases, refunds, expiry...) as its own row and sums usage to one row per
    UTC day, so hundreds of micro-charges do not bury a grant; a filter lists entries one by one.
    """
    if entry_type:
        return history_entries(user=user, entry_type=entry_type)
    shown = [t for t in history_filter("").entry_types if t not in USAGE_TYPES]
    rows = [HistoryRow.of(e) for e in LedgerEntry.objects.filter(user=user, entry_type__in=shown)]
    days = list(
        LedgerEntry.objects.filter(user=user, entry_type__in=USAGE_TYPES)
        .annotate(day=TruncDate("created_at", tzinfo=dt.UTC)).values("day")
        .annotate(total=Sum("amount_micros"), calls=Count("id"), last_id=Max("id"),
                  last_at=Max("created_at"))
        .order_by()
    )
    balance_after = dict(LedgerEntry.objects.filter(id__in=[d["last_id"] for d in days])
                         .values_list("id", "balance_after_micros"))
    for d in days:
        rows.append(HistoryRow(
            created_at=d["last_at"], entry_type=EntryType.USAGE, amount_micros=d["total"],
            held_change_micros=0, balance_after_micros=balance_after[d["last_id"]],
            description=f"{d['calls']:,} API call{'s' if d['calls'] != 1 else ''} on {date_label(d['day'])}",
            calls=d["calls"], day=d["day"],
        ))
    rows.sort(key=lambda r: r.created_at, reverse=True)
    return rows


def entry_label(entry_type: str) -> str:
    """What people call an entry type: a metered call's capture is usage."""
    return ENTRY_LABELS.get(entry_type) or EntryType(entry_type).label


def recent_usage(*, user: User, limit: int = 20) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(user=user).select_related("model")[:limit])


def api_keys(*, user: User) -> list[ApiKey]:
    return list(ApiKey.objects.filter(user=user).order_by("revoked_at", "-created_at"))


@dataclass(frozen=True)
class DailySpend:
    days: list[dt.date]                       # oldest first, every day in the range
    models: list[str]                         # by total spend, largest first
    micros: dict[tuple[dt.date, str], int]    # (day, model) -> cost
    total_micros: int


def daily_spend_by_model(
    *, user: User, days: int = USAGE_CHART_DAYS, now: dt.datetime | None = None
) -> DailySpend:
    """Cost of the user's calls per UTC day and model over the last `days` days (today included)."""
    now = now or timezone.now()
    today = now.astimezone(dt.UTC).date()
    return spend_between(user=user, start=today - dt.timedelta(days=days - 1), end=today)


def _utc_range(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The instants from `start`'s midnight to the midnight after `end` (UTC days, end included)."""
    return (dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC))


def spend_between(*, user: User, start: dt.date, end: dt.date) -> DailySpend:
    """Cost of the user's calls per UTC day and model, from `start` to `end` (both included)."""
    days = (end - start).days + 1
    start_at, end_at = _utc_range(start, end)
    rows = (
        UsageRecord.objects.filter(user=user, started_at__gte=start_at, started_at__lt=end_at,
                                   cost_micros__gt=0)
        .annotate(day=TruncDate("started_at", tzinfo=dt.UTC))
        .values("day", "model_id")
        .annotate(total=Sum("cost_micros"))
        .order_by()
    )
    micros: dict[tuple[dt.date, str], int] = {}
    per_model: dict[str, int] = {}
    for row in rows:
        micros[(row["day"], row["model_id"])] = row["total"]
        per_model[row["model_id"]] = per_model.get(row["model_id"], 0) + row["total"]
    return DailySpend(
        days=[start + dt.timedelta(days=i) for i in range(days)],
        models=sorted(per_model, key=lambda m: (-per_model[m], m)),
        micros=micros,
        total_micros=sum(per_model.values()),
    )


USAGE_GROUPS = {
    "all": ("Day, model and key", ("day", "model", "key")),
    "day": ("Day", ("day",)),
    "model": ("Model", ("model",)),
    "key": ("API key", ("key",)),
}
PLAYGROUND_KEY_LABEL = "Web playground"  # calls made signed in, without a key


@dataclass(frozen=True)
class UsageRow:
    day: dt.date | None
    model_id: str
    key_label: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


@dataclass(frozen=True)
class UsageReport:
    start: dt.date
    end: dt.date
    group: str
    columns: tuple[str, ...]
    rows: list[UsageRow]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


def usage_report(*, user: User, start: dt.date, end: dt.date, group: str = "all") -> UsageReport:
    """The user's calls from `start` to `end` (UTC days, both included), summed per the group's
    columns (day, model, key), newest day first then the largest cost. Exact micro-dollars."""
    columns = USAGE_GROUPS.get(group, USAGE_GROUPS["all"])[1]
    start_at, end_at = _utc_range(start, end)
    fields = {"day": "day", "model": "model_id", "key": "api_key_id"}
    qs = (UsageRecord.objects.filter(user=user, started_at__gte=start_at, started_at__lt=end_at)
          .annotate(day=TruncDate("started_at", tzinfo=dt.UTC))
          .values(*[fields[c] for c in columns])
          .annotate(requests=Count("id"), prompt=Sum("prompt_tokens"),
                    completion=Sum("completion_tokens"), cost=Sum("cost_micros"))
          .order_by())
    keys = {k.pk: k for k in ApiKey.objects.filter(user=user)}

    def key_label(key_id) -> str:
        if key_id is None:
            return PLAYGROUND_KEY_LABEL
        key = keys.get(key_id)
        return f"{key.name} ({key.masked})" if key else "A deleted key"

    rows = [UsageRow(
        day=r.get("day"), model_id=r.get("model_id", ""),
        key_label=key_label(r["api_key_id"]) if "key" in columns else "",
        requests=r["requests"], prompt_tokens=r["prompt"] or 0,
        completion_tokens=r["completion"] or 0, cost_micros=r["cost"] or 0,
    ) for r in qs]
    rows.sort(key=lambda r: (-(r.day.toordinal() if r.day else 0), -r.cost_micros,
                             r.model_id, r.key_label))
    return UsageReport(
        start=start, end=end, group=group if group in USAGE_GROUPS else "all", columns=columns,
        rows=rows, requests=sum(r.requests for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        cost_micros=sum(r.cost_micros for r in rows),
    )
