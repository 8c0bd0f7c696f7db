"""Where a user stands with the first-token promotion, in words they are shown."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from accounts.models import User
from credits import money
from credits.exceptions import UnknownUser
from credits.models import CreditGrant, CreditHold
from credits.models.promotions import user_promotion_terms
from credits.promotion.messages import OFFER_PAUSED, VERIFY_TO_SPEND


@dataclass(frozen=True)
class PromotionStatus:
    eligible: bool  # could still earn it by generating a first token now
    claimed: bool
    deadline: dt.datetime
    seconds_remaining: float
    amount_micros: int
    expiry_days: int
    # Why this user is not (or not yet) getting it, in plain words; "" when nothing to say
    # (credits.promotion: velocity limits, a claimed address, the offer paused, verify email).
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
    """Where `user` stands with their first-token promotion at `now` (from the user row
    the caller holds, plus one query for their terms)."""
    now = now or timezone.now()
    terms = user_promotion_terms(user)
    deadline = terms.deadline_for(user)
    remaining = max(0.0, (deadline - now).total_seconds())
    eligible = terms.open_to(user, now=now)
    return PromotionStatus(
        eligible=eligible,
        claimed=user.promotion_claimed,
        deadline=deadline,
        seconds_remaining=round(remaining, 3) if eligible else 0.0,
        amount_micros=terms.amount_micros,
        expiry_days=terms.expiry_days,
        withheld_reason=withheld_reason(
            user, terms_active=terms.active, terms_amount_micros=terms.amount_micros),
    )


def eligibility_label(status: PromotionStatus, *, now: dt.datetime) -> str:
    """The console's one line on it, computed from `status` (read at `now`): the same rule as
    the user list's "eligible now" filter (credits.promotion.terms.eligible_now_q)."""
    deadline = status.deadline.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if status.claimed:
        return "Claimed (earned with a first token)"
    if status.eligible:
        return f"Eligible now ✓ — the window closes {deadline} ({int(status.seconds_remaining)} s left)"
    if status.withheld_reason:
        return f"Not eligible: {status.withheld_reason}"
    if now > status.deadline:
        return f"Not eligible: the window closed {deadline}"
    return "Not eligible"


def withheld_reason(user: User, *, terms_active: bool, terms_amount_micros: int) -> str:
    """What to tell the user about a promotion they are not (or not yet) getting.
    No query unless their credit waits for an email verification."""
    if user.promotion_claimed:
        if settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION and user.email_verified_at is None and (
            CreditGrant.objects.filter(user_id=user.pk, awaiting_verification=True,
                                       voided_at__isnull=True).exists()
        ):
            return VERIFY_TO_SPEND
        return ""
    if user.promotion_withheld_reason:
        return user.promotion_withheld_reason
    if terms_amount_micros > 0 and not terms_active and user.first_token_at is None:
        return OFFER_PAUSED
    return ""


def check_promotion_eligibility(
    *, user: User | int, now: dt.datetime | None = None
) -> tuple[bool, float]:
    """(eligible now, seconds remaining in the window)."""
    target = user if isinstance(user, User) else User.objects.filter(pk=user).first()
    if target is None:
        raise UnknownUser(f"Unknown user {user!r}.")
    status = promotion_status(target, now=now)
    return status.eligible, status.seconds_remaining


@dataclass(frozen=True)
class CallPromotionOutcome:
    """What the first-token promotion decided for a call, after its first token."""

    granted: bool  # the user holds the first-token credit now
    unbacked_micros: int  # the part of the call's hold still waiting on a promotion that did not come
    withheld_reason: str  # why it did not come, when the abuse controls said so
    awaiting_verification: bool = False  # it came, locked until the email is verified


def call_promotion_outcome(*, user_id: int, hold_id=None) -> CallPromotionOutcome:
    """Read once the first-token signal's receivers have run (same transaction or after)."""
    claimed, reason = User.objects.filter(pk=user_id).values_list(
        "promotion_claimed", "promotion_withheld_reason").get()
    unbacked = 0
    if hold_id is not None:
        unbacked = CreditHold.objects.filter(pk=hold_id).values_list(
            "pending_promotion_micros", flat=True).first() or 0
    locked = claimed and bool(unbacked) and CreditGrant.objects.filter(
        user_id=user_id, awaiting_verification=True, voided_at__isnull=True).exists()
    return CallPromotionOutcome(granted=claimed, unbacked_micros=unbacked,
                                withheld_reason=VERIFY_TO_SPEND if locked else reason,
                                awaiting_verification=locked)
