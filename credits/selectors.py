"""Reads of the ledger: balances, grants, history, the promotion's state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from credits import abuse, money
from credits.models import CreditGrant, CreditHold, EntryType, HoldStatus, LedgerEntry
from credits.promotions import PromotionTerms, user_promotion_terms


def promotion_terms(user: User) -> PromotionTerms:
    """The first-token promotion this user plays for: their assigned promotion and
    variant (credits.promotions), or the PROMOTION_* settings when they have none.
    `active` is False when its kill switch is off or no promotion was running."""
    return user_promotion_terms(user)


@dataclass(frozen=True)
class PromotionStatus:
    eligible: bool  # could still earn it by generating a first token now
    claimed: bool
    deadline: dt.datetime
    seconds_remaining: float
    amount_micros: int
    expiry_days: int
    # Why this user is not (or not yet) getting it, in plain words; "" when nothing to say
    # (credits.abuse: velocity limits, a claimed address, the offer paused, verify email).
    withheld_reason: str = ""

    def as_json(self) -> dict:
        return {
            "eligible": self.eligible,
            "claimed": self.claimed,
            # The same form as DRF's timestamps: UTC with a Z.
            "deadline": self.deadline.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "seconds_remaining": self.seconds_remaining,
            "amount": money.format_usd(self.amount_micros),
            "withheld_reason": self.withheld_reason or None,
        }


def promotion_status(user: User, *, now: dt.datetime | None = None) -> PromotionStatus:
    now = now or timezone.now()
    terms = promotion_terms(user)
    deadline = user.date_joined + dt.timedelta(seconds=terms.window_seconds)
    remaining = max(0.0, (deadline - now).total_seconds())
    eligible = (
        terms.active
        and not user.promotion_claimed
        and user.promotion_eligible
        and user.first_token_at is None
        and now <= deadline
    )
    return PromotionStatus(
        eligible=eligible,
        claimed=user.promotion_claimed,
        deadline=deadline,
        seconds_remaining=round(remaining, 3) if eligible else 0.0,
        amount_micros=terms.amount_micros,
        expiry_days=terms.expiry_days,
        withheld_reason=abuse.withheld_reason(
            user, terms_active=terms.active, terms_amount_micros=terms.amount_micros),
    )


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
    user.refresh_from_db(fields=["credit_balance", "credit_held", "first_token_at",
                                 "promotion_claimed", "promotion_eligible",
                                 "promotion_withheld_reason", "email_verified_at"])
    grants = list(CreditGrant.objects.filter(user=user).order_by("-granted_at", "-id"))
    usable = [g for g in grants if g.is_usable_at(now)]
    # Credit awaiting an email verification counts in the balance but is not available.
    available = sum(g.free_micros for g in usable if g.is_spendable_at(now))
    expiries = [g.expires_at for g in usable if g.expires_at and g.remaining_micros > 0]
    return UserCredits(
        balance_micros=user.credit_balance,
        available_micros=available,
        held_micros=user.credit_held,
        promotional_micros=sum(g.remaining_micros for g in usable if g.kind == "PROMOTIONAL"),
        grants=grants,
        history=LedgerEntry.objects.filter(user=user).select_related("grant"),
        active_holds=list(CreditHold.objects.filter(user=user, status=HoldStatus.ACTIVE)),
        promotion=promotion_status(user, now=now),
        next_expiry=min(expiries) if expiries else None,
    )


def was_charged(*, user_id: int, reference: str) -> bool:
    """Whether the call `reference` was charged: its hold captured, or a direct debit
    naming it (the late charge of a call whose hold was lost)."""
    return (CreditHold.objects.filter(user_id=user_id, reference=reference,
                                      status=HoldStatus.CAPTURED).exists()
            or LedgerEntry.objects.filter(user_id=user_id, reference=reference,
                                          entry_type=EntryType.USAGE).exists())
