"""Reads of the ledger: balances, grants, history, the promotion's state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Max, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import User
from config.rows import cursor as sql_cursor
from credits.models import (
    CreditAccount,
    CreditGrant,
    CreditHold,
    EntryType,
    GrantKind,
    HoldStatus,
    LedgerEntry,
)
from credits.promotion.status import PromotionStatus, promotion_status


@dataclass(frozen=True)
class UserCredits:
    balance_micros: int
    available_micros: int
    held_micros: int
    promotional_micros: int
    grants: list[CreditGrant]
    history: QuerySet[LedgerEntry]
    active_holds: list[CreditHold]
    promotion: PromotionStatus
    next_expiry: dt.datetime | None


def get_user_credits(*, user: User, now: dt.datetime | None = None) -> UserCredits:
    """Balance, available (usable and not held), held, grants and history.

    `available` leaves out grants already past expiry that the expiry task has
    not swept yet, so it is what a debit could draw right now.
    """
    now = now or timezone.now()
    user.refresh_from_db(fields=["first_token_at",
                                 "promotion_claimed", "promotion_eligible",
                                 "promotion_withheld_reason", "email_verified_at"])
    account = CreditAccount.objects.filter(user_id=user.pk).first() or CreditAccount(user_id=user.pk)
    grants = list(CreditGrant.objects.filter(user=user).order_by("-granted_at", "-id"))
    usable = [g for g in grants if g.is_usable_at(now)]
    # Credit awaiting an email verification counts in the balance but is not available.
    available = sum(g.free_micros for g in usable if g.is_spendable_at(now))
    expiries = [g.expires_at for g in usable if g.expires_at and g.remaining_micros > 0]
    return UserCredits(
        balance_micros=account.balance_micros,
        available_micros=available,
        held_micros=account.held_micros,
        promotional_micros=sum(g.remaining_micros for g in usable if g.kind == "PROMOTIONAL"),
        grants=grants,
        history=LedgerEntry.objects.filter(user=user).select_related("grant"),
        active_holds=list(CreditHold.objects.filter(user=user, status=HoldStatus.ACTIVE)),
        promotion=promotion_status(user, now=now),
        next_expiry=min(expiries) if expiries else None,
    )


@dataclass(frozen=True)
class AccountFigures:
    balance_micros: int
    available_micros: int  # what a debit could draw now (usable, spendable, not held)


def account_figures(*, user_id: int, now: dt.datetime | None = None) -> AccountFigures:
    """The balance and what is available now, as `get_user_credits` counts them (two
    queries)."""
    now = now or timezone.now()
    balance = (CreditAccount.objects.filter(user_id=user_id)
               .values_list("balance_micros", flat=True).first() or 0)
    grants = CreditGrant.objects.filter(user_id=user_id, remaining_micros__gt=0,
                                        voided_at__isnull=True)
    available = sum(g.free_micros for g in grants if g.is_spendable_at(now))
    return AccountFigures(balance_micros=balance, available_micros=available)


@dataclass(frozen=True)
class RecentCall:
    """A call the ledger charged a user for, and what can still be refunded of it."""

    request_id: str
    at: dt.datetime
    charged_micros: int
    refunded_micros: int

    @property
    def refundable_micros(self) -> int:
        return max(0, self.charged_micros - self.refunded_micros)


def recent_charged_calls(*, user_id: int, limit: int = 20) -> list[RecentCall]:
    """The user's latest charged calls (captures and direct debits naming a request id),
    newest first, with what was already refunded for each (REFUND grants naming it)."""
    rows = list(
        LedgerEntry.objects.filter(user_id=user_id,
                                   entry_type__in=[EntryType.CAPTURE, EntryType.USAGE])
        .exclude(reference="").order_by().values("reference")
        .annotate(charged=Sum("amount_micros"), at=Max("created_at"))
        .order_by("-at")[:limit])
    refunded = dict(
        CreditGrant.objects.filter(user_id=user_id, kind=GrantKind.REFUND,
                                   source_reference__in=[r["reference"] for r in rows])
        .order_by().values("source_reference").annotate(total=Sum("amount_micros"))
        .values_list("source_reference", "total"))
    return [RecentCall(request_id=r["reference"], at=r["at"], charged_micros=-r["charged"],
                       refunded_micros=refunded.get(r["reference"], 0)) for r in rows]


@dataclass(frozen=True)
class CallCharge:
    """What the ledger charged for one call (its request id is the entries' reference)."""

    user_id: int
    charged_micros: int


def call_charge(*, request_id: str) -> CallCharge | None:
    """The charge of the call `request_id` (captures and direct debits), or None when the
    ledger never charged a call by that id."""
    rows = list(LedgerEntry.objects.filter(
        reference=request_id, entry_type__in=[EntryType.CAPTURE, EntryType.USAGE],
    ).values_list("user_id", "amount_micros"))
    if not rows:
        return None
    return CallCharge(user_id=rows[0][0], charged_micros=-sum(amount for _, amount in rows))


def call_heard_at(*, request_id: str) -> dt.datetime | None:
    """When the call `request_id` last showed signs of life: its active hold's last journal
    write, or the hold's creation if it never wrote one. None when it holds nothing (never
    held, or settled)."""
    row = (CreditHold.objects.filter(reference=request_id, status=HoldStatus.ACTIVE)
           .values_list("journal_at", "created_at").first())
    if row is None:
        return None
    return row[0] or row[1]


def swept_holds(*, hold_ids=(), since: dt.datetime) -> list[CreditHold]:
    """Holds the stale-hold sweep settled: those of `hold_ids`, and any settled since `since`
    (so a run that was interrupted before its calls were recorded is caught up)."""
    return list(CreditHold.objects.filter(swept=True)
                .filter(Q(pk__in=list(hold_ids)) | Q(settled_at__gte=since))
                .order_by("settled_at"))


def call_refunded_micros(*, request_id: str, user_id: int) -> int:
    """Credit already given back for the call `request_id`: the REFUND grants naming it
    (their source reference; their entries carry it too). Voided ones count: they were given."""
    total = CreditGrant.objects.filter(
        user_id=user_id, kind=GrantKind.REFUND, source_reference=request_id,
    ).aggregate(total=Sum("amount_micros"))["total"]
    return total or 0


def balance_micros(*, user_id: int) -> int:
    """The account's balance (0 without one), in one plain query: read by every stream for
    its headers."""
    with sql_cursor() as cursor:
        cursor.execute(f"SELECT balance_micros FROM {CreditAccount._meta.db_table} "
                       "WHERE user_id = %s", [user_id])
        row = cursor.fetchone()
    return row[0] if row else 0
