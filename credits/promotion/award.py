"""Awarding the first-token credit: the window, the kill switch and the abuse controls,
then the grant, all in the transaction that stamped the first token.

Under the user's row lock and a global award lock (so concurrent awards never pass a
cap together): one claim per normalized email, ever; the per-network daily limit; the
spend caps per hour and per day, whose crossing pauses every live first-token promotion
and tells staff once; soft signals that flag the grant for staff review.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.emails import canonical_email
from accounts.models import User
from config.observability import metrics
from config.queue import enqueue_on_commit
from credits import money, notices, services
from credits.models import (
    CreditGrant,
    GrantKind,
    NotificationEvent,
    Promotion,
    PromotionClaim,
    PromotionReview,
    SignupRecord,
    TierAward,
)
from credits.models.promotions import (
    FIRST_TOKEN_PROMOTION_KEY,
    SIGNUP_PROMOTION_KINDS,
    user_promotion_terms,
)
from credits.promotion.expiry import terms_expiry
from credits.promotion.messages import (
    SOFT_SIGNALS,
    WITHHELD_CLAIMED,
    WITHHELD_NETWORK_PROMOTIONS,
    WITHHELD_PAUSED,
)
from credits.promotion.signup import network_promotions_exhausted, withhold_promotion
from credits.services.locks import advisory_lock, lock_account, lock_user
from credits.services.validation import now_or
from credits.staff_mail import email_staff

logger = logging.getLogger(__name__)

AWARD_LOCK_KEY = 0x5452_4F4D  # pg_advisory_xact_lock key of promotion awards
# The metric's reason label (tokenbank_promotions_total): short codes, not the user's text.
REFUSAL_CODES = {WITHHELD_CLAIMED: "email_claimed", WITHHELD_NETWORK_PROMOTIONS: "network_limit",
                 WITHHELD_PAUSED: "spend_cap"}


def apply_first_token_promotion(
    *, user: User | int, now: dt.datetime | None = None
) -> CreditGrant | None:
    """Grant the first-token promotion iff the user's first token came within the
    window of their assigned promotion (`promotion_terms`; inclusive) while that
    promotion is active. The grant records the variant. Exactly once per user:
    the grant's idempotency key is unique per user in the database. Holds made
    against the pending promotion are moved onto the new grant.
    Returns the grant, or None when the user did not earn it.
    """
    now = now_or(now)
    with transaction.atomic():
        locked = lock_user(user)
        if locked.promotion_claimed:
            return CreditGrant.objects.get(user_id=locked.pk, idempotency_key=FIRST_TOKEN_PROMOTION_KEY)
        if locked.first_token_at is None:
            return None
        terms = user_promotion_terms(locked)
        in_window = locked.first_token_at - locked.date_joined <= dt.timedelta(
            seconds=terms.window_seconds
        )
        # An inactive promotion (kill switch) awards nothing from now on.
        if not (in_window and locked.promotion_eligible and terms.active):
            metrics.promotion_decided(granted=False, reason="late" if not in_window else (
                "ineligible" if not locked.promotion_eligible else "inactive"))
            if locked.promotion_eligible:
                locked.promotion_eligible = False
                locked.save(update_fields=["promotion_eligible"])
            return None
        # Abuse controls: one claim per normalized email, per-network limit, spend caps.
        award = reserve_award(user=locked, amount_micros=terms.amount_micros, now=now)
        if isinstance(award, str):
            return None
        account = lock_account(locked)
        grant = services.grant_locked(
            account, amount_micros=terms.amount_micros, kind=GrantKind.PROMOTIONAL,
            description="First-token promotion", actor=None,
            **terms_expiry(terms, now=now).grant_kwargs(),
            idempotency_key=FIRST_TOKEN_PROMOTION_KEY, source_reference="first-token", now=now,
            promotion_variant_id=terms.variant_id,
        )
        locked.promotion_claimed = True
        locked.save(update_fields=["promotion_claimed"])
        finish_award(user=locked, award=award, grant=grant, now=now)
        metrics.promotion_decided(granted=True)
        # Credit locked until the email is verified backs nothing, not even the calls that
        # reserved against it while it was pending: they are refused, nothing charged.
        if not grant.awaiting_verification:
            services.back_pending_holds(account=account, grant=grant, now=now)
        notices.enqueue_notice(user_id=locked.pk, event=NotificationEvent.PROMOTION_GRANTED)
        return grant


def _cap_micros(name: str) -> int:
    return money.usd_to_micros(str(getattr(settings, name) or "0"))


def _signup_of(user: User) -> SignupRecord | None:
    return SignupRecord.objects.filter(user_id=user.pk).order_by("-created_at", "-id").first()


@dataclass
class Award:
    """What `reserve_award` decided; passed back to `finish_award` after the grant."""

    claim: PromotionClaim
    signup: SignupRecord | None


def reserve_award(*, user: User, amount_micros: int, now: dt.datetime) -> Award | str:
    """Under the user's row lock, inside the award transaction: check the per-network
    daily limit and the spend caps (under a global lock, so concurrent awards can never
    pass a cap together), then claim the normalized email. Returns an Award, or the
    reason the user is told when the credit is withheld (the user's flags are updated;
    a cap crossed also pauses the promotion and tells staff after commit)."""
    advisory_lock(AWARD_LOCK_KEY)  # taken after the user's row lock
    normalized = user.email_normalized or canonical_email(user.email)
    signup = _signup_of(user)
    network = signup.network if signup is not None else ""
    if PromotionClaim.objects.filter(email_normalized=normalized).exists():
        return _refuse(user, WITHHELD_CLAIMED)
    if network_promotions_exhausted(network, now):
        return _refuse(user, WITHHELD_NETWORK_PROMOTIONS)
    if cap_reached(amount_micros=amount_micros, now=now):
        return _refuse(user, WITHHELD_PAUSED)
    try:
        with transaction.atomic():
            claim = PromotionClaim.objects.create(
                email_normalized=normalized, user=user, amount_micros=amount_micros,
                network=network, claimed_at=now)
    except IntegrityError:  # claimed by a concurrent award for the same address
        return _refuse(user, WITHHELD_CLAIMED)
    return Award(claim=claim, signup=signup)


def cap_reached(*, amount_micros: int, now: dt.datetime) -> bool:
    """Would awarding `amount_micros` now pass a spend cap (first-token claims and every
    milestone tier count)? If so, pause the promotions (staff are told once). Call under
    the award lock (AWARD_LOCK_KEY)."""
    for setting, window in (("PROMOTION_CAP_USD_PER_HOUR", dt.timedelta(hours=1)),
                            ("PROMOTION_CAP_USD_PER_DAY", dt.timedelta(days=1))):
        cap = _cap_micros(setting)
        if not cap:
            continue
        since = now - window
        granted = (PromotionClaim.objects.filter(claimed_at__gt=since).aggregate(
            total=Sum("amount_micros"))["total"] or 0) + (TierAward.objects.filter(
                awarded_at__gt=since).aggregate(total=Sum("amount_micros"))["total"] or 0)
        if granted + amount_micros > cap:
            _pause_promotions(reason=f"{setting} reached: {money.display_usd(granted)} granted "
                                     f"in the last {_window_name(window)}", now=now)
            return True
    return False


def _window_name(window: dt.timedelta) -> str:
    return "hour" if window == dt.timedelta(hours=1) else "day"


def _refuse(user: User, reason: str) -> str:
    withhold_promotion(user=user, reason=reason)
    metrics.promotion_decided(granted=False, reason=REFUSAL_CODES.get(reason, "other"))
    return reason


def finish_award(*, user: User, award: Award, grant: CreditGrant, now: dt.datetime) -> None:
    """After the grant, in its transaction: link the claim, lock the credit until the
    email is verified (when required), and flag the grant for review on soft signals."""
    PromotionClaim.objects.filter(pk=award.claim.pk).update(grant=grant)
    if settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION and user.email_verified_at is None:
        CreditGrant.objects.filter(pk=grant.pk).update(awaiting_verification=True)
        grant.awaiting_verification = True
    signals = soft_signals(user=user, signup=award.signup, claim=award.claim, now=now)
    if signals:
        PromotionReview.objects.create(
            grant=grant, user_id=user.pk, signals=",".join(signals),
            details="; ".join(SOFT_SIGNALS[s] for s in signals)[:500], created_at=now)


def soft_signals(*, user: User, signup: SignupRecord | None, claim: PromotionClaim,
                 now: dt.datetime) -> list[str]:
    """The soft signals (SOFT_SIGNALS) this award trips, under the hard limits."""
    found = []
    if claim.network and PromotionClaim.objects.filter(
        network=claim.network, claimed_at__gte=now - dt.timedelta(days=1)
    ).exclude(pk=claim.pk).exists():
        found.append("network_repeat")
    if signup is not None and signup.ip and SignupRecord.objects.filter(
        ip=signup.ip, created_at__gte=signup.created_at - dt.timedelta(hours=1),
        created_at__lte=signup.created_at,
    ).exclude(pk=signup.pk).exists():
        found.append("shared_ip")
    if "+" in user.email.partition("@")[0]:
        found.append("plus_tag")
    return found


# --- the spend caps pause the promotion ------------------------------------------


def _pause_promotions(*, reason: str, now: dt.datetime) -> list[int]:
    """Switch off every live first-token promotion (the kill switch), once: only the
    transaction that flips one (under the award lock) schedules the staff notice."""
    ids = list(Promotion.objects.filter(kind__in=SIGNUP_PROMOTION_KINDS, is_active=True)
               .values_list("pk", flat=True))
    if not ids:
        return []
    Promotion.objects.filter(pk__in=ids).update(is_active=False, paused_reason=reason[:255],
                                                paused_at=now, pause_notified_at=None)
    logger.warning("Promotions %s paused: %s", ids, reason)
    enqueue_on_commit("credits.tasks.notify_promotion_paused", ids, inline_if_broker_down=True)
    return ids


def notify_staff_promotion_paused(*, promotion_ids: list[int]) -> int:
    """Email active staff (and ADMINS) that a spend cap paused these promotions.
    At most once per pause: each promotion's `pause_notified_at` is claimed first."""
    now = timezone.now()
    told = []
    for promotion in Promotion.objects.filter(pk__in=promotion_ids, is_active=False,
                                              pause_notified_at__isnull=True):
        if Promotion.objects.filter(pk=promotion.pk, pause_notified_at__isnull=True).update(
                pause_notified_at=now):
            told.append(promotion)
    if not told:
        return 0
    lines = [f"- {p.name}: {p.paused_reason}" for p in told]
    body = ("A spend cap on the sign-up credit was reached, so these promotions paused "
            "themselves (no new awards):\n\n" + "\n".join(lines) + "\n\nTurn one back on in "
            "the admin (Promotions, 'active') once you have looked.\n")
    email_staff(subject="TokenBank: the sign-up credit paused itself (spend cap)", body=body)
    return len(told)
