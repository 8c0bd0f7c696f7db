"""Referrals: each user's link, attribution once at sign-up, the reward when the referred
user meets the programme's condition (default: their first purchase), and the claw back.

The terms are data (ReferralProgram, newest row; no row: the REFERRAL_* settings). The
referrer gets a REFERRAL grant, the referred user a welcome bonus (REFERRAL kind too), both
in one transaction that locks the two users' rows in id order, then their accounts. Refused
for good (with the reason staff see) when the two accounts share a normalized email, a
sign-up network or a payment fingerprint, or when the referrer reached the monthly cap.
Rewarded at most once: the referral row is locked and moves PENDING -> REWARDED once, and
each grant's idempotency key is unique per user.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum

from accounts.emails import canonical_email
from accounts.models import User
from credits import money, services
from credits.exceptions import GrantNotActive
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    PaymentFingerprint,
    Referral,
    ReferralCode,
    ReferralCondition,
    ReferralProgram,
    ReferralStatus,
    SignupRecord,
)
from credits.services.locks import lock_account, lock_user
from credits.services.validation import now_or

CODE_BYTES = 6  # 8 URL-safe characters

REFUSED_SAME_EMAIL = "The two accounts share a normalized email address."
REFUSED_SAME_NETWORK = "The two accounts signed up from the same network."
REFUSED_SAME_PAYMENT = "The two accounts paid with the same payment method."
REFUSED_MONTHLY_CAP = "The referrer reached this month's cap of rewarded referrals."


@dataclass(frozen=True)
class ProgramTerms:
    program_id: int | None
    active: bool
    condition: str
    referrer_amount_micros: int
    referred_amount_micros: int
    expiry_days: int | None
    monthly_cap: int


def program_terms(program: ReferralProgram | None = None) -> ProgramTerms:
    """The terms in force: `program`, else the newest programme, else the settings."""
    program = program or ReferralProgram.objects.order_by("-created_at", "-id").first()
    if program is not None:
        return ProgramTerms(
            program_id=program.pk, active=program.is_active, condition=program.condition,
            referrer_amount_micros=program.referrer_amount_micros,
            referred_amount_micros=program.referred_amount_micros,
            expiry_days=program.expiry_days, monthly_cap=program.monthly_cap)
    expiry = int(settings.REFERRAL_EXPIRY_DAYS)
    return ProgramTerms(
        program_id=None, active=True, condition=ReferralCondition.FIRST_PURCHASE,
        referrer_amount_micros=money.usd_to_micros(str(settings.REFERRAL_REFERRER_USD)),
        referred_amount_micros=money.usd_to_micros(str(settings.REFERRAL_REFERRED_USD)),
        expiry_days=expiry or None, monthly_cap=int(settings.REFERRAL_MONTHLY_CAP))


# --- the link ------------------------------------------------------------------------------


def referral_code_for(*, user: User) -> str:
    """The user's referral code, made on first use (unique; a collision draws again)."""
    existing = ReferralCode.objects.filter(user_id=user.pk).values_list("code", flat=True).first()
    if existing:
        return existing
    for _ in range(5):
        code = secrets.token_urlsafe(CODE_BYTES)
        try:
            with transaction.atomic():
                return ReferralCode.objects.create(user_id=user.pk, code=code).code
        except IntegrityError:
            existing = ReferralCode.objects.filter(user_id=user.pk).values_list(
                "code", flat=True).first()
            if existing:  # made concurrently for this user
                return existing
    raise RuntimeError("Could not draw a free referral code.")


def clean_code(code: str | None) -> str:
    """A code as it may arrive in a URL or a form; '' when it cannot be one."""
    code = (code or "").strip()
    if not code or len(code) > 32 or not all(c.isalnum() or c in "-_" for c in code):
        return ""
    return code


# --- attribution at sign-up ---------------------------------------------------------------


def attribute_referral(*, user: User, code: str | None,
                       now: dt.datetime | None = None) -> Referral | None:
    """Attribute a new user to the owner of `code`, once (the row is unique per referred
    user). An unknown code, the user's own, or a second attribution changes nothing.
    Call in the sign-up's transaction (accounts' user_registered signal)."""
    code = clean_code(code)
    if not code:
        return None
    referrer_id = ReferralCode.objects.filter(code=code).values_list("user_id", flat=True).first()
    if referrer_id is None or referrer_id == user.pk:
        return None
    existing = Referral.objects.filter(referred_id=user.pk).first()
    if existing is not None:
        return existing
    terms = program_terms()
    try:
        with transaction.atomic():
            return Referral.objects.create(referrer_id=referrer_id, referred_id=user.pk,
                                           code=code, program_id=terms.program_id,
                                           created_at=now_or(now))
    except IntegrityError:
        return Referral.objects.filter(referred_id=user.pk).first()


# --- the reward ----------------------------------------------------------------------------


def record_payment_fingerprint(*, user_id: int, fingerprint: str,
                               now: dt.datetime | None = None) -> None:
    """Remember that `user_id` paid with this payment method (idempotent)."""
    fingerprint = (fingerprint or "").strip()[:128]
    if not fingerprint or not User.objects.filter(pk=user_id).exists():
        return
    PaymentFingerprint.objects.bulk_create(
        [PaymentFingerprint(user_id=user_id, fingerprint=fingerprint,
                            first_seen_at=now_or(now))], ignore_conflicts=True)


def condition_met(referred: User, condition: str) -> bool:
    if condition == ReferralCondition.FIRST_TOKEN:
        return referred.first_token_at is not None
    if condition == ReferralCondition.EMAIL_VERIFIED:
        return referred.email_verified_at is not None
    return CreditGrant.objects.filter(user_id=referred.pk, kind=GrantKind.PURCHASED).exists()


def refusal_reason(referrer: User, referred: User, terms: ProgramTerms,
                   now: dt.datetime) -> str:
    """Why this pair earns nothing ('' when nothing stands in the way)."""
    if canonical_email(referrer.email) == canonical_email(referred.email) or (
            referrer.email_normalized and referrer.email_normalized == referred.email_normalized):
        return REFUSED_SAME_EMAIL
    networks = set(SignupRecord.objects.filter(user_id=referrer.pk).exclude(network="")
                   .values_list("network", flat=True))
    if networks and SignupRecord.objects.filter(user_id=referred.pk,
                                                network__in=networks).exists():
        return REFUSED_SAME_NETWORK
    cards = PaymentFingerprint.objects.filter(user_id=referrer.pk).values("fingerprint")
    if PaymentFingerprint.objects.filter(user_id=referred.pk, fingerprint__in=cards).exists():
        return REFUSED_SAME_PAYMENT
    if terms.monthly_cap:
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        rewarded = Referral.objects.filter(referrer_id=referrer.pk,
                                           status__in=[ReferralStatus.REWARDED,
                                                       ReferralStatus.CLAWED_BACK],
                                           decided_at__gte=month_start).count()
        if rewarded >= terms.monthly_cap:
            return REFUSED_MONTHLY_CAP
    return ""


@dataclass(frozen=True)
class ReferralOutcome:
    referral: Referral | None
    rewarded_now: bool = False


def settle_referral(*, referred: User | int, now: dt.datetime | None = None) -> ReferralOutcome:
    """Reward (or refuse, for good) the referral of `referred` once its condition is met.
    Locks both users' rows in id order, then the referral row, then the accounts; writes
    both grants and the referral's new status in one transaction. Idempotent: a decided
    referral is returned as it is; one whose condition is not met yet stays PENDING.
    With the programme switched off, nothing is decided (it may be switched back on)."""
    now = now_or(now)
    referred_id = referred.pk if isinstance(referred, User) else referred
    pair = Referral.objects.filter(referred_id=referred_id).values_list(
        "pk", "referrer_id").first()
    if pair is None:
        return ReferralOutcome(referral=None)
    referral_id, referrer_id = pair
    with transaction.atomic():
        users = {uid: lock_user(uid) for uid in sorted({referrer_id, referred_id})}
        referral = Referral.objects.select_for_update().get(pk=referral_id)
        if referral.status != ReferralStatus.PENDING:
            return ReferralOutcome(referral=referral)
        program = ReferralProgram.objects.filter(pk=referral.program_id).first()
        terms = program_terms(program)
        referrer, target = users[referrer_id], users[referred_id]
        if not terms.active or not condition_met(target, terms.condition):
            return ReferralOutcome(referral=referral)
        reason = refusal_reason(referrer, target, terms, now)
        referral.decided_at = now
        if reason:
            referral.status, referral.refusal_reason = ReferralStatus.REFUSED, reason
            referral.save(update_fields=["status", "refusal_reason", "decided_at"])
            return ReferralOutcome(referral=referral)
        expires_at = now + dt.timedelta(days=terms.expiry_days) if terms.expiry_days else None
        accounts = {uid: lock_account(uid) for uid in sorted(users)}
        referral.referrer_grant = services.grant_locked(
            accounts[referrer_id], amount_micros=terms.referrer_amount_micros,
            kind=GrantKind.REFERRAL, description=f"Referral: {target.email} joined",
            actor=None, expires_at=expires_at, idempotency_key=f"referral:{referral.pk}:referrer",
            source_reference=f"referral:{referral.pk}", now=now)
        if terms.referred_amount_micros:
            referral.referred_grant = services.grant_locked(
                accounts[referred_id], amount_micros=terms.referred_amount_micros,
                kind=GrantKind.REFERRAL, description="Welcome bonus: you were referred",
                actor=None, expires_at=expires_at,
                idempotency_key=f"referral:{referral.pk}:welcome",
                source_reference=f"referral:{referral.pk}", now=now)
        referral.status = ReferralStatus.REWARDED
        referral.save(update_fields=["status", "decided_at", "referrer_grant", "referred_grant"])
        return ReferralOutcome(referral=referral, rewarded_now=True)


def claw_back_referral(*, referral: Referral | int, actor: User, reason: str) -> Referral:
    """Staff: void what is left of both grants of a rewarded referral (VOID entries with
    the reason and the staff member), as a promotion's review does. Credit already spent
    stays spent. Raises ValidationError unless the referral is REWARDED, or without a
    reason."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("A reason is required to claw credit back.")
    referral_id = referral.pk if isinstance(referral, Referral) else referral
    with transaction.atomic():
        locked = Referral.objects.select_for_update().get(pk=referral_id)
        if locked.status != ReferralStatus.REWARDED:
            raise ValidationError(f"Only a rewarded referral can be clawed back "
                                  f"(this one is {locked.get_status_display().lower()}).")
        voided = 0
        for grant_id in (locked.referrer_grant_id, locked.referred_grant_id):
            if grant_id is None:
                continue
            try:
                services.void_grant(grant=grant_id, reason=f"Referral clawback: {reason}",
                                    actor=actor)
            except GrantNotActive:
                continue
            voided += -(LedgerEntry.objects.filter(
                grant_id=grant_id, entry_type=EntryType.VOID, operation_key=f"void:{grant_id}",
            ).aggregate(total=Sum("amount_micros"))["total"] or 0)
        locked.status = ReferralStatus.CLAWED_BACK
        locked.clawed_back_by = actor
        locked.clawed_back_micros = voided
        locked.refusal_reason = reason[:255]
        locked.save(update_fields=["status", "clawed_back_by", "clawed_back_micros",
                                   "refusal_reason"])
        return locked


# --- the dashboard card --------------------------------------------------------------------


@dataclass(frozen=True)
class ReferralSummary:
    code: str
    referred: int
    rewarded: int
    pending: int
    earned_micros: int
    referrer_amount_micros: int
    referred_amount_micros: int
    condition: str
    active: bool

    @property
    def earned_display(self) -> str:
        return money.display_usd(self.earned_micros)

    @property
    def referrer_amount_display(self) -> str:
        return money.display_usd(self.referrer_amount_micros, places=0)

    @property
    def referred_amount_display(self) -> str:
        return money.display_usd(self.referred_amount_micros, places=0)

    @property
    def condition_label(self) -> str:
        return {ReferralCondition.FIRST_PURCHASE: "makes their first purchase",
                ReferralCondition.FIRST_TOKEN: "generates their first token",
                ReferralCondition.EMAIL_VERIFIED: "verifies their email"}.get(
                    self.condition, "qualifies")


def referral_summary(*, user: User) -> ReferralSummary:
    """The user's link code, how many they referred, and what that earned them."""
    code = referral_code_for(user=user)
    counts = Referral.objects.filter(referrer_id=user.pk).aggregate(
        referred=Count("pk"),
        rewarded=Count("pk", filter=Q(status=ReferralStatus.REWARDED)),
        pending=Count("pk", filter=Q(status=ReferralStatus.PENDING)))
    earned = CreditGrant.objects.filter(
        user_id=user.pk, kind=GrantKind.REFERRAL,
        pk__in=Referral.objects.filter(referrer_id=user.pk, status=ReferralStatus.REWARDED)
        .values("referrer_grant_id"),
    ).aggregate(total=Sum("amount_micros"))["total"] or 0
    terms = program_terms()
    return ReferralSummary(code=code, referred=counts["referred"], rewarded=counts["rewarded"],
                           pending=counts["pending"], earned_micros=earned,
                           referrer_amount_micros=terms.referrer_amount_micros,
                           referred_amount_micros=terms.referred_amount_micros,
                           condition=terms.condition, active=terms.active)
