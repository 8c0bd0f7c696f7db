"""Telling users about their credit: what to send, when, and at most once.

Events: the first-token promotion was granted, credit expires soon, credit
expired, the balance fell below LOW_BALANCE_THRESHOLD_USD, the balance is used up;
and a staff member added, refunded or removed credit or changed an expiry (STAFF_EVENTS:
one notice per ledger operation, saying the customer note, never the internal reason).

- The ledger queues events through `credits.notices` inside its transaction: only an
  enqueue scheduled for after the commit (no query, nothing sent if the transaction
  rolls back). An enqueue that fails (Redis down) is logged and dropped; `catch_up`
  (periodic) finds the missed events later.
- `notify` re-checks the event for the user, claims a unique
  (user, event, key) Notification row, then emails. A second call, a retry or a
  concurrent worker finds the row and sends nothing: at most once per occurrence.
- `recent_notifications` is the dashboard's read.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Case, CharField, Exists, F, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.functions import Cast, Concat
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from accounts.models import User
from credits import money
from credits.models import (
    CreditGrant,
    EntryType,
    LedgerEntry,
    Notification,
    NotificationEvent,
)
from credits.models.promotions import FIRST_TOKEN_PROMOTION_KEY
from credits.notices import SPENDING_ENTRY_TYPES, low_balance_threshold_micros

logger = logging.getLogger(__name__)

_TEMPLATES = {
    NotificationEvent.PROMOTION_GRANTED: "promotion_granted",
    NotificationEvent.CREDITS_EXPIRING: "credits_expiring",
    NotificationEvent.CREDITS_EXPIRED: "credits_expired",
    NotificationEvent.LOW_BALANCE: "low_balance",
    NotificationEvent.BALANCE_EXHAUSTED: "balance_exhausted",
    NotificationEvent.CREDIT_ADDED: "account_changed",
    NotificationEvent.CREDIT_REFUNDED: "account_changed",
    NotificationEvent.CREDIT_REMOVED: "account_changed",
    NotificationEvent.EXPIRY_CHANGED: "account_changed",
}
_SUBJECTS = {
    NotificationEvent.PROMOTION_GRANTED: "You earned {amount} of free TokenBank credit",
    NotificationEvent.CREDITS_EXPIRING: "{amount} of your TokenBank credit expires on {expires}",
    NotificationEvent.CREDITS_EXPIRED: "{amount} of your TokenBank credit expired",
    NotificationEvent.LOW_BALANCE: "Your TokenBank balance is low: {balance}",
    NotificationEvent.BALANCE_EXHAUSTED: "Your TokenBank balance is used up",
    NotificationEvent.CREDIT_ADDED: "{amount} of credit was added to your TokenBank account",
    NotificationEvent.CREDIT_REFUNDED: "You received a {amount} refund from TokenBank",
    NotificationEvent.CREDIT_REMOVED: "{amount} of credit was removed from your TokenBank account",
    NotificationEvent.EXPIRY_CHANGED: "The expiry of your TokenBank credit changed",
}
_SUMMARIES = {
    NotificationEvent.PROMOTION_GRANTED: (
        "Your first token earned you {amount} of promotional credit, usable until {expires}."
    ),
    NotificationEvent.CREDITS_EXPIRING: (
        "{amount} of {kind} credit expires on {expires}. Credit expiring soonest is used first."
    ),
    NotificationEvent.CREDITS_EXPIRED: "{amount} of {kind} credit reached its expiry date.",
    NotificationEvent.LOW_BALANCE: (
        "Your balance is {balance}, below {threshold}. Top up to keep your API calls running."
    ),
    NotificationEvent.BALANCE_EXHAUSTED: (
        "Your balance is $0.00: API calls are refused until you add credit."
    ),
    NotificationEvent.CREDIT_ADDED: "{note}: {amount} was added to your balance{until}.",
    NotificationEvent.CREDIT_REFUNDED: "{note}: {amount} was refunded to your balance.",
    NotificationEvent.CREDIT_REMOVED: "{note}: {amount} was removed from your balance.",
    NotificationEvent.EXPIRY_CHANGED: "{note}: {change}",
}

# Staff changes: the entry types each notice is about (entries of a staff member: an actor
# and an internal reason), one notice per ledger operation (its key).
STAFF_EVENTS = {
    NotificationEvent.CREDIT_ADDED: Q(entry_type=EntryType.GRANT, amount_micros__gt=0),
    NotificationEvent.CREDIT_REFUNDED: Q(entry_type=EntryType.REFUND, amount_micros__gt=0),
    NotificationEvent.CREDIT_REMOVED: Q(entry_type__in=[EntryType.VOID, EntryType.ADJUSTMENT,
                                                        EntryType.REFUND], amount_micros__lt=0),
    NotificationEvent.EXPIRY_CHANGED: Q(entry_type=EntryType.EXPIRY_CHANGE),
}
# The entry types the catch-up looks at for expiries and staff changes (not usage).
_CAUGHT_UP_TYPES = [EntryType.EXPIRY, EntryType.GRANT, EntryType.REFUND, EntryType.VOID,
                    EntryType.ADJUSTMENT, EntryType.EXPIRY_CHANGE]
# A staff expiry change's own EXPIRY entries are told by EXPIRY_CHANGED, not CREDITS_EXPIRED.
_STAFF_EXPIRY_OPERATION = "expiry-change:"
# Notices about a grant that a later staff notice on that grant makes untrue ("$20 is usable").
_SUPERSEDABLE = [NotificationEvent.PROMOTION_GRANTED, NotificationEvent.CREDITS_EXPIRING,
                 NotificationEvent.CREDIT_ADDED, NotificationEvent.EXPIRY_CHANGED]
_SUPERSEDING = [NotificationEvent.CREDIT_REMOVED, NotificationEvent.EXPIRY_CHANGED]


# --- deciding and sending ---------------------------------------------------------


@dataclass(frozen=True)
class _Occurrence:
    key: str
    context: dict = field(default_factory=dict)
    grant: CreditGrant | None = None


def _when(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


def _promotion_granted(user: User, now: dt.datetime) -> list[_Occurrence]:
    grant = CreditGrant.objects.filter(
        user=user, idempotency_key=FIRST_TOKEN_PROMOTION_KEY, voided_at__isnull=True
    ).first()
    if grant is None:
        return []
    return [_Occurrence(key="first-token", grant=grant, context={
        "amount": money.display_usd(grant.amount_micros), "expires": _when(grant.expires_at),
    })]


def _expiring(user: User, now: dt.datetime) -> list[_Occurrence]:
    horizon = now + dt.timedelta(days=settings.EXPIRING_SOON_DAYS)
    grants = CreditGrant.objects.filter(
        user=user, voided_at__isnull=True, expires_at__gt=now, expires_at__lte=horizon,
        remaining_micros__gt=F("held_micros"),
    ).order_by("expires_at", "id")
    return [
        _Occurrence(key=f"grant:{g.pk}", grant=g, context={
            "amount": money.display_usd(g.free_micros), "expires": _when(g.expires_at),
            "kind": g.get_kind_display().lower(),
        })
        for g in grants
    ]


def _expired(user: User, now: dt.datetime) -> list[_Occurrence]:
    since = now - dt.timedelta(hours=settings.NOTIFICATION_CATCH_UP_HOURS)
    rows = (
        LedgerEntry.objects.filter(user=user, entry_type=EntryType.EXPIRY, created_at__gte=since)
        .exclude(operation_key__startswith=_STAFF_EXPIRY_OPERATION)
        .order_by("grant_id")
        .values("grant_id")
        .annotate(total=Sum("amount_micros"))
    )
    totals = {row["grant_id"]: -row["total"] for row in rows if row["total"]}
    grants = CreditGrant.objects.in_bulk(list(totals))
    return [
        _Occurrence(key=f"grant:{grant_id}", grant=grants[grant_id], context={
            "amount": money.display_usd(amount),
            "kind": grants[grant_id].get_kind_display().lower(),
            "expires": _when(grants[grant_id].expires_at),
        })
        for grant_id, amount in totals.items()
    ]


def _funding_episode(user: User) -> str:
    """Balance notices repeat once per top-up: the key names the latest grant."""
    latest = CreditGrant.objects.filter(user=user).order_by("-id").values_list("id", flat=True)
    return f"after-grant:{latest.first() or 0}"


def _low_balance(user: User, now: dt.datetime) -> list[_Occurrence]:
    threshold = low_balance_threshold_micros()
    if not 0 < user.credit_balance < threshold:
        return []  # topped up meanwhile, or exhausted (that notice says it)
    return [_Occurrence(key=_funding_episode(user), context={
        "balance": money.display_usd(user.credit_balance),
        "threshold": money.display_usd(threshold),
    })]


def _exhausted(user: User, now: dt.datetime) -> list[_Occurrence]:
    if user.credit_balance != 0 or not CreditGrant.objects.filter(user=user).exists():
        return []
    return [_Occurrence(key=_funding_episode(user), context={"balance": money.display_usd(0)})]


def _staff_entries():
    """Entries a staff member wrote since internal reasons were split from customer notes."""
    return LedgerEntry.objects.filter(actor__isnull=False).exclude(internal_reason="")


def _staff_changes(event: NotificationEvent):
    def occurrences(user: User, now: dt.datetime) -> list[_Occurrence]:
        since = now - dt.timedelta(hours=settings.NOTIFICATION_CATCH_UP_HOURS)
        entries = list(_staff_entries().filter(STAFF_EVENTS[event], user=user,
                                               created_at__gte=since)
                       .select_related("grant").order_by("id"))
        by_operation: dict[str, list[LedgerEntry]] = {}
        for entry in entries:
            by_operation.setdefault(entry.operation_key, []).append(entry)
        return [_staff_occurrence(event, key, group, now) for key, group in by_operation.items()]

    return occurrences


def _staff_occurrence(event: NotificationEvent, key: str, entries: list[LedgerEntry],
                      now: dt.datetime) -> _Occurrence:
    first = entries[0]
    grant = first.grant
    amount = abs(sum(e.amount_micros for e in entries))
    context = {"amount": money.display_usd(amount), "note": first.description,
               "kind": grant.get_kind_display().lower() if grant else "", "until": "",
               "expires": _when(grant.expires_at if grant else None)}
    if event == NotificationEvent.CREDIT_ADDED and grant is not None and grant.expires_at:
        context["until"] = f", usable until {_when(grant.expires_at)}"
    if event == NotificationEvent.EXPIRY_CHANGED and grant is not None:
        expired = -sum(e.amount_micros for e in LedgerEntry.objects.filter(
            operation_key=key, user_id=first.user_id, entry_type=EntryType.EXPIRY))
        if grant.expires_at is not None and grant.expires_at <= first.created_at:
            context["change"] = (f"{money.display_usd(expired)} of {context['kind']} credit "
                                 f"expired on {_when(grant.expires_at)}.")
        else:
            when = "never" if grant.expires_at is None else f"on {_when(grant.expires_at)}"
            context["change"] = (f"your {context['kind']} credit of "
                                 f"{money.display_usd(grant.amount_micros)} now expires {when}.")
    return _Occurrence(key=key, grant=grant, context=context)


_OCCURRENCES = {
    NotificationEvent.PROMOTION_GRANTED: _promotion_granted,
    NotificationEvent.CREDITS_EXPIRING: _expiring,
    NotificationEvent.CREDITS_EXPIRED: _expired,
    NotificationEvent.LOW_BALANCE: _low_balance,
    NotificationEvent.BALANCE_EXHAUSTED: _exhausted,
    **{event: _staff_changes(event) for event in STAFF_EVENTS},
}


def notify(*, user_id: int, event: str, now: dt.datetime | None = None) -> list[Notification]:
    """Record and email what `event` means for this user now, each occurrence once.

    The condition is checked again here (a top-up since the enqueue cancels a
    low-balance notice). Idempotent and safe to run concurrently: the unique
    (user, event, key) row is committed before the email is sent, so no
    occurrence is ever emailed twice; a failed send is recorded on the row,
    not retried. Returns the notifications created by this call.
    """
    event = NotificationEvent(event)
    now = now or timezone.now()
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        return []
    occurrences = _OCCURRENCES[event](user, now)
    if not occurrences:
        return []
    told = set(
        Notification.objects.filter(user=user, event=event).values_list("key", flat=True)
    )
    created = []
    for occurrence in occurrences:
        if occurrence.key not in told:
            notification = _record_and_send(user, event, occurrence, now)
            if notification is not None:
                created.append(notification)
    return created


def _dashboard_url() -> str:
    try:
        path = reverse("billing:dashboard")
    except NoReverseMatch:
        path = "/"
    return settings.SITE_URL.rstrip("/") + path


def _record_and_send(user: User, event: NotificationEvent, occurrence: _Occurrence,
                     now: dt.datetime) -> Notification | None:
    subject = _SUBJECTS[event].format(**occurrence.context)
    summary = _SUMMARIES[event].format(**occurrence.context)
    try:
        with transaction.atomic():
            notification = Notification.objects.create(
                user=user, event=event, key=occurrence.key, grant=occurrence.grant,
                subject=subject[:255], summary=summary[:500], created_at=now,
            )
    except IntegrityError:
        return None  # another worker claimed it first
    context = {**occurrence.context, "user": user, "summary": summary, "subject": subject,
               "dashboard_url": _dashboard_url()}
    name = _TEMPLATES[event]
    try:
        message = EmailMultiAlternatives(
            subject=subject, body=render_to_string(f"emails/{name}.txt", context), to=[user.email]
        )
        message.attach_alternative(render_to_string(f"emails/{name}.html", context), "text/html")
        message.send()
    except Exception as exc:
        logger.exception("Could not email %s to user %s", event, user.pk)
        notification.email_error = f"{type(exc).__name__}: {exc}"[:500]
        Notification.objects.filter(pk=notification.pk).update(email_error=notification.email_error)
        return notification
    notification.emailed_at = timezone.now()
    Notification.objects.filter(pk=notification.pk).update(emailed_at=notification.emailed_at)
    return notification


# --- periodic sweeps ---------------------------------------------------------------


def _notify_each(user_ids, event: str, now: dt.datetime) -> int:
    return sum(len(notify(user_id=uid, event=event, now=now)) for uid in sorted(set(user_ids)))


def notify_expiring_soon(*, now: dt.datetime | None = None) -> int:
    """Tell each user about credit expiring within EXPIRING_SOON_DAYS, once per grant."""
    now = now or timezone.now()
    horizon = now + dt.timedelta(days=settings.EXPIRING_SOON_DAYS)
    told = Notification.objects.filter(
        user_id=OuterRef("user_id"), event=NotificationEvent.CREDITS_EXPIRING,
        grant_id=OuterRef("pk"),
    )
    user_ids = (
        CreditGrant.objects.filter(
            voided_at__isnull=True, expires_at__gt=now, expires_at__lte=horizon,
            remaining_micros__gt=F("held_micros"),
        )
        .filter(~Exists(told))
        .values_list("user_id", flat=True)
    )
    return _notify_each(user_ids, NotificationEvent.CREDITS_EXPIRING, now)


def catch_up(*, now: dt.datetime | None = None) -> int:
    """Send what the enqueue-on-commit hooks missed (broker down, worker lost) and
    the expiry notices, looking back NOTIFICATION_CATCH_UP_HOURS. Idempotent."""
    now = now or timezone.now()
    since = now - dt.timedelta(hours=settings.NOTIFICATION_CATCH_UP_HOURS)
    sent = 0

    promotion_told = Notification.objects.filter(
        user_id=OuterRef("user_id"), event=NotificationEvent.PROMOTION_GRANTED
    )
    promoted = CreditGrant.objects.filter(
        idempotency_key=FIRST_TOKEN_PROMOTION_KEY, granted_at__gte=since, voided_at__isnull=True
    ).filter(~Exists(promotion_told))
    sent += _notify_each(promoted.values_list("user_id", flat=True),
                         NotificationEvent.PROMOTION_GRANTED, now)

    # Expired credit and staff changes: one query over the entries since `since` (a notice
    # kind and key per entry; those whose notice exists are left out).
    natural_expiry = Q(entry_type=EntryType.EXPIRY) & ~Q(
        operation_key__startswith=_STAFF_EXPIRY_OPERATION)
    by_staff = Q(actor__isnull=False) & ~Q(internal_reason="")
    notice = Case(
        When(natural_expiry, then=Value(NotificationEvent.CREDITS_EXPIRED.value)),
        *[When(by_staff & entries, then=Value(event.value))
          for event, entries in STAFF_EVENTS.items()],
        default=None, output_field=CharField())
    notice_key = Case(
        When(natural_expiry, then=Concat(Value("grant:"),
                                         Cast("grant_id", output_field=CharField()))),
        default=F("operation_key"), output_field=CharField())
    told = Notification.objects.filter(user_id=OuterRef("user_id"), event=OuterRef("notice"),
                                       key=OuterRef("notice_key"))
    pending = (
        LedgerEntry.objects.filter(created_at__gte=since, entry_type__in=_CAUGHT_UP_TYPES)
        .annotate(notice=notice, notice_key=notice_key)
        .filter(notice__isnull=False).filter(~Exists(told))
        .order_by().values_list("notice", "user_id").distinct()
    )
    users_by_event: dict[str, list[int]] = {}
    for event, user_id in pending:
        users_by_event.setdefault(event, []).append(user_id)
    for event in [NotificationEvent.CREDITS_EXPIRED, *STAFF_EVENTS]:
        sent += _notify_each(users_by_event.get(event, []), event, now)

    spent_recently = LedgerEntry.objects.filter(
        user_id=OuterRef("pk"), entry_type__in=SPENDING_ENTRY_TYPES, amount_micros__lt=0,
        created_at__gte=since,
    )
    latest_grant = CreditGrant.objects.filter(user_id=OuterRef("pk")).order_by("-id").values("id")
    spenders = (
        User.objects.filter(Exists(spent_recently))
        .annotate(episode=Concat(Value("after-grant:"),
                                 Cast(Subquery(latest_grant[:1]), output_field=CharField())))
    )
    for event, balance in (
        (NotificationEvent.BALANCE_EXHAUSTED, Q(credit_account__balance_micros=0)),
        (NotificationEvent.LOW_BALANCE,
         Q(credit_account__balance_micros__gt=0,
           credit_account__balance_micros__lt=low_balance_threshold_micros())),
    ):
        told = Notification.objects.filter(user_id=OuterRef("pk"), event=event,
                                           key=OuterRef("episode"))
        user_ids = spenders.filter(balance).filter(~Exists(told)).values_list("pk", flat=True)
        sent += _notify_each(user_ids, event, now)
    return sent


# --- the dashboard's read ------------------------------------------------------------


def recent_notifications(*, user: User, limit: int = 10) -> list[Notification]:
    """The user's latest notifications, newest first (subject, summary, created_at,
    event and get_event_display(), emailed_at). A notice a later staff change made untrue
    is left out: once a grant was voided or re-dated, "$20 is usable until ..." no longer
    stands (the notice of the change says what happened)."""
    superseded = Notification.objects.filter(
        user_id=OuterRef("user_id"), grant_id=OuterRef("grant_id"), event__in=_SUPERSEDING,
        id__gt=OuterRef("id"))
    return list(
        Notification.objects.filter(user=user)
        .exclude(Q(event__in=_SUPERSEDABLE, grant__voided_at__isnull=False)
                 | Q(event__in=_SUPERSEDABLE, grant__isnull=False) & Exists(superseded))
        .order_by("-created_at", "-id")[:limit])
