"""Optional email verification of the sign-up credit (PROMOTION_REQUIRE_EMAIL_VERIFICATION):
the grant is made as usual but is not spendable until the signed link is followed, and
is voided PROMOTION_VERIFICATION_HOURS after the grant otherwise."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from config.queue import enqueue_on_commit
from credits import money, services
from credits.exceptions import GrantNotActive
from credits.models import CreditGrant

VERIFY_SALT = "credits.abuse.verify-email"  # unchanged: links already emailed stay valid
RESEND_INTERVAL = dt.timedelta(minutes=1)  # at most one verification email per user per minute
SEND_TASK = "credits.tasks.send_verification_email"

logger = logging.getLogger(__name__)


def verification_token(user: User) -> str:
    return signing.dumps({"u": user.pk, "e": user.email}, salt=VERIFY_SALT, compress=True)


def verification_url(user: User) -> str:
    path = reverse("onboarding:verify_email", kwargs={"token": verification_token(user)})
    return settings.SITE_URL.rstrip("/") + path


def send_verification_email(*, user: User) -> None:
    """Email the signed verification link (sign-up, when verification is required)."""
    send_mail(
        "Verify your TokenBank email address",
        f"Hello,\n\nFollow this link to verify your email address and unlock your free "
        f"credit:\n\n{verification_url(user)}\n\nIf you did not sign up, ignore this email.\n",
        None, [user.email],
    )


def schedule_verification_email(*, user: User) -> None:
    """After the sign-up commits, have a worker email the link (when verification is
    required); if the broker is down, send it from here rather than lose it. Counts as a
    send for the resend limit."""
    if settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION:
        User.objects.filter(pk=user.pk).update(verification_email_sent_at=timezone.now())
        enqueue_on_commit(SEND_TASK, user.pk, inline_if_broker_down=True)


class ResendOutcome:
    SENT = "sent"
    TOO_SOON = "too_soon"
    ALREADY_VERIFIED = "already_verified"


def resend_verification(*, user: User, now: dt.datetime | None = None) -> str:
    """Email the verification link again (the same email, through the same task as at
    sign-up, sent inline if the broker is down), at most once per RESEND_INTERVAL per user.
    The limit is database-backed: a conditional UPDATE claims `verification_email_sent_at`,
    so concurrent clicks and several web processes send one email, and it survives restarts.
    Returns a ResendOutcome: SENT, TOO_SOON (nothing sent) or ALREADY_VERIFIED."""
    now = now or timezone.now()
    with transaction.atomic():
        claimed = User.objects.filter(pk=user.pk, email_verified_at__isnull=True).filter(
            Q(verification_email_sent_at__isnull=True)
            | Q(verification_email_sent_at__lte=now - RESEND_INTERVAL)
        ).update(verification_email_sent_at=now)
        if not claimed:
            if User.objects.filter(pk=user.pk, email_verified_at__isnull=False).exists():
                return ResendOutcome.ALREADY_VERIFIED
            return ResendOutcome.TOO_SOON
        enqueue_on_commit(SEND_TASK, user.pk, inline_if_broker_down=True)
    return ResendOutcome.SENT


@dataclass(frozen=True)
class PendingVerification:
    """Promotional credit locked until the user verifies their email address."""

    email: str
    amount_micros: int  # what verifying unlocks (the grants' remaining credit)
    deadline: dt.datetime  # voided at this moment if still unverified

    @property
    def amount_display(self) -> str:
        return money.display_usd(self.amount_micros)


def pending_verification(*, user: User, now: dt.datetime | None = None) -> PendingVerification | None:
    """The credit waiting for this user's email verification, or None. Shown whether or not
    PROMOTION_REQUIRE_EMAIL_VERIFICATION is still on: a grant made while it was on stays
    locked (and is voided at the deadline) until the link is followed. One query."""
    if user.email_verified_at is not None:
        return None
    now = now or timezone.now()
    grants = [g for g in CreditGrant.objects.filter(
        user_id=user.pk, awaiting_verification=True, voided_at__isnull=True)
        if g.is_usable_at(now)]
    amount = sum(g.remaining_micros for g in grants)
    if amount <= 0:
        return None
    first = min(g.granted_at for g in grants)
    return PendingVerification(
        email=user.email, amount_micros=amount,
        deadline=first + dt.timedelta(hours=settings.PROMOTION_VERIFICATION_HOURS))


def send_verification_email_to(*, user_id: int) -> bool:
    """Email the link to a user whose address is not verified yet. Failures are logged."""
    user = User.objects.filter(pk=user_id, email_verified_at__isnull=True).first()
    if user is None:
        return False
    try:
        send_verification_email(user=user)
    except Exception:
        logger.exception("Could not email the verification link to user %s", user_id)
        return False
    return True


def verify_email(*, token: str) -> User:
    """Mark the address verified and make credit awaiting verification spendable.
    Idempotent. Raises ValidationError for a bad or forged token, or an address that
    changed since the link was sent."""
    try:
        data = signing.loads(token, salt=VERIFY_SALT)
    except signing.BadSignature:
        raise ValidationError("This verification link is not valid.") from None
    with transaction.atomic():
        user = User.objects.select_for_update(no_key=True).filter(pk=data.get("u")).first()
        if user is None or user.email != data.get("e"):
            raise ValidationError("This verification link is not valid.")
        if user.email_verified_at is None:
            user.email_verified_at = timezone.now()
            user.save(update_fields=["email_verified_at"])
        CreditGrant.objects.filter(user_id=user.pk, awaiting_verification=True).update(
            awaiting_verification=False)
        # An EMAIL_VERIFIED milestone or referral condition may be met now.
        enqueue_on_commit("credits.tasks.evaluate_promotions", user.pk,
                          inline_if_broker_down=True)
    return user


def void_unverified_promotions(*, now: dt.datetime | None = None) -> int:
    """Void promotional credit still awaiting verification PROMOTION_VERIFICATION_HOURS
    after it was granted. Idempotent (a voided grant is skipped); returns grants voided."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.PROMOTION_VERIFICATION_HOURS)
    ids = list(CreditGrant.objects.filter(awaiting_verification=True, voided_at__isnull=True,
                                          granted_at__lte=cutoff)
               .order_by("id").values_list("pk", flat=True))
    voided = 0
    for grant_id in ids:
        with transaction.atomic():
            grant = CreditGrant.objects.filter(pk=grant_id).first()
            # Under the user's lock (the one verify_email takes): verified meanwhile? keep it.
            User.objects.select_for_update(no_key=True).filter(pk=grant.user_id).first()
            if not CreditGrant.objects.filter(pk=grant_id, awaiting_verification=True).exists():
                continue
            try:
                services.void_grant(grant=grant_id, now=now, reason=(
                    f"Email address not verified within {settings.PROMOTION_VERIFICATION_HOURS} "
                    "hours"))
            except GrantNotActive:
                continue
        voided += 1
    return voided
