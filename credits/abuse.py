"""Abuse controls of the sign-up credit: cheap for honest users, expensive to farm.

Rules (each a setting; see config/settings.py):

- Sign-up refused for a disposable email domain (`disposable_email_domains`
  plus staff's EmailDomainRule rows; an ALLOW rule wins) — `check_signup_email`.
- One sign-up credit per normalized email (accounts.emails), ever: a unique
  PromotionClaim row is written with the grant.
- Velocity limits, counted in the database (SignupRecord, PromotionClaim), so every
  process shares them and they survive restarts: sign-ups per IP and per network
  (/24 IPv4, /64 IPv6) per hour, promotions per network per day. Over one, the
  sign-up still works but the promotion is withheld, with a reason the user sees
  (`User.promotion_withheld_reason`) — `record_signup`, and again at award time.
- Global spend caps per hour and per day, checked at award time under a lock that
  serializes awards; crossing one pauses every live first-token promotion
  (Promotion.is_active off, `paused_reason`) and tells staff once.
- Soft signals flag a grant for staff review (PromotionReview); staff confirm it or
  claw back what is left of it (`void_grant` on that grant only).
- Optional email verification: the grant is made as usual but not spendable until
  the signed link is followed; voided after PROMOTION_VERIFICATION_HOURS otherwise.

The client's address is `client_ip(request)`: REMOTE_ADDR, unless that is one of
TRUSTED_PROXIES, then the right-most X-Forwarded-For hop that is not a trusted proxy.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from functools import lru_cache, partial

from disposable_email_domains import blocklist as DISPOSABLE_DOMAINS
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, Sum
from django.urls import reverse
from django.utils import timezone

from accounts.emails import canonical_email, email_domain
from accounts.models import User
from credits import money
from credits.exceptions import GrantNotActive
from credits.models import (
    CreditGrant,
    DomainRuleAction,
    EmailDomainRule,
    EntryType,
    LedgerEntry,
    Promotion,
    PromotionClaim,
    PromotionKind,
    PromotionReview,
    ReviewStatus,
    SignupRecord,
)

logger = logging.getLogger(__name__)

# --- what users are told ---------------------------------------------------------

DISPOSABLE_REFUSED = (
    "Sign-ups with disposable email addresses are not accepted. "
    "Please use an address you will keep."
)
WITHHELD_IP = (
    "Several accounts were created from your IP address in the last hour, so this account "
    "does not get the free sign-up credit. Everything else works: you can buy credit any time."
)
WITHHELD_NETWORK = (
    "Many accounts were created from your network in the last hour, so this account does "
    "not get the free sign-up credit. Everything else works: you can buy credit any time."
)
WITHHELD_NETWORK_PROMOTIONS = (
    "Your network has received the free sign-up credit several times today, so this account "
    "does not get it. Everything else works: you can buy credit any time."
)
WITHHELD_CLAIMED = (
    "The free sign-up credit was already given to an account with this email address, "
    "so this account does not get it again."
)
OFFER_PAUSED = "The sign-up offer is paused right now, so no free credit is given at the moment."
WITHHELD_PAUSED = (
    "The sign-up offer was paused (its budget was reached) when your first token arrived, "
    "so this account did not get the free credit."
)
VERIFY_TO_SPEND = (
    "Verify your email address to use your free credit: follow the link we emailed you."
)
VERIFY_LINK_SENT = "Link sent to {email}. Follow it to unlock your credit."
VERIFY_RESEND_TOO_SOON = "Please wait a minute before asking again."
VERIFY_ALREADY_DONE = "Already verified: your email address is confirmed."

# Soft signals: not refusals, they flag a grant for a human to look at.
SOFT_SIGNALS = {
    "network_repeat": "the sign-up's network already received the sign-up credit in the last day",
    "shared_ip": "another account signed up from the same IP address in the last hour",
    "plus_tag": "the address carries a +tag",
}

VERIFY_SALT = "credits.abuse.verify-email"
RESEND_INTERVAL = dt.timedelta(minutes=1)  # at most one verification email per user per minute
_AWARD_LOCK_KEY = 0x5452_4F4D  # pg_advisory_xact_lock keys: promotion awards,
_SIGNUP_LOCK_KEY = 0x5452_5347  # and counted sign-ups


# --- client address and network ----------------------------------------------------


@lru_cache(maxsize=8)
def _trusted_networks(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def _parse_ip(value: str | None):
    try:
        address = ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _is_trusted(address) -> bool:
    return any(address in net for net in _trusted_networks(tuple(settings.TRUSTED_PROXIES)))


def client_ip(request) -> str | None:
    """The client's IP: REMOTE_ADDR, unless REMOTE_ADDR is a trusted proxy; then the
    right-most X-Forwarded-For address that is not a trusted proxy (each trusted proxy
    appends the peer it saw, so anything left of that was written by the client and
    is ignored). None when REMOTE_ADDR is missing or malformed."""
    remote = _parse_ip(request.META.get("REMOTE_ADDR"))
    if remote is None or not _is_trusted(remote):
        return str(remote) if remote is not None else None
    client = remote
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        address = _parse_ip(hop)
        if address is None:
            break  # garbage from before our proxies: trust nothing further left
        client = address
        if not _is_trusted(address):
            break
    return str(client)


def network_of(ip: str | None) -> str:
    """'203.0.113.0/24' for IPv4, '2001:db8:1:2::/64' for IPv6, '' for no address."""
    address = _parse_ip(ip)
    if address is None:
        return ""
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


# --- sign-up: disposable domains and velocity ------------------------------------


def _domain_and_parents(domain: str) -> list[str]:
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)] or [domain]


def is_disposable_domain(domain: str) -> bool:
    """True when sign-ups from `domain` are refused: listed by the disposable-domains
    package or a BLOCK rule (the domain or a parent), and no ALLOW rule for it."""
    candidates = _domain_and_parents(domain.strip().lower())
    rules = dict(EmailDomainRule.objects.filter(domain__in=candidates).values_list("domain", "action"))
    if DomainRuleAction.ALLOW in rules.values():
        return False
    return DomainRuleAction.BLOCK in rules.values() or any(d in DISPOSABLE_DOMAINS for d in candidates)


def check_signup_email(email: str) -> None:
    """Raise ValidationError({"email": [...]}) when the address may not sign up."""
    if is_disposable_domain(email_domain(email)):
        raise ValidationError({"email": [DISPOSABLE_REFUSED]})


def _limit(name: str) -> int:
    return int(getattr(settings, name))


def record_signup(*, user: User, ip: str | None, now: dt.datetime | None = None) -> SignupRecord:
    """Record where a new account signed up from and withhold the promotion (with a
    reason the user sees) when a velocity limit is reached or the address already had
    it. Call inside the registration's transaction. Sign-ups without an address (shell,
    scripts) are recorded but not counted against any limit. Counted sign-ups are
    serialized (a transaction-scoped lock, held only to the sign-up's commit), so a burst
    of simultaneous sign-ups cannot pass a limit together."""
    now = now or timezone.now()
    normalized = user.email_normalized or canonical_email(user.email)
    network = network_of(ip)
    reason = ""
    if ip:
        _advisory_lock(_SIGNUP_LOCK_KEY)
    if PromotionClaim.objects.filter(email_normalized=normalized).exists():
        reason = WITHHELD_CLAIMED
    elif ip:
        hour_ago = now - dt.timedelta(hours=1)
        per_ip, per_network = _limit("SIGNUPS_PER_IP_PER_HOUR"), _limit("SIGNUPS_PER_NETWORK_PER_HOUR")
        recent = SignupRecord.objects.filter(created_at__gte=hour_ago)
        if per_ip and recent.filter(ip=ip).count() >= per_ip:
            reason = WITHHELD_IP
        elif per_network and recent.filter(network=network).count() >= per_network:
            reason = WITHHELD_NETWORK
        elif _network_promotions_exhausted(network, now):
            reason = WITHHELD_NETWORK_PROMOTIONS
    record = SignupRecord.objects.create(user=user, email_normalized=normalized, ip=ip or None,
                                         network=network, created_at=now)
    if reason:
        withhold_promotion(user=user, reason=reason)
    return record


def _network_promotions_exhausted(network: str, now: dt.datetime) -> bool:
    limit = _limit("PROMOTIONS_PER_NETWORK_PER_DAY")
    if not (limit and network):
        return False
    day_ago = now - dt.timedelta(days=1)
    return PromotionClaim.objects.filter(network=network, claimed_at__gte=day_ago).count() >= limit


def withhold_promotion(*, user: User, reason: str) -> None:
    """The user will not earn the first-token promotion; `reason` is shown to them."""
    User.objects.filter(pk=user.pk).update(promotion_eligible=False,
                                           promotion_withheld_reason=reason[:255])
    user.promotion_eligible, user.promotion_withheld_reason = False, reason[:255]


# --- award time: called by credits.services.apply_first_token_promotion -------------


def _cap_micros(name: str) -> int:
    return money.usd_to_micros(str(getattr(settings, name) or "0"))


def _lock_awards() -> None:
    """Serialize promotion awards. Taken after the user's row lock."""
    _advisory_lock(_AWARD_LOCK_KEY)


def _advisory_lock(key: int) -> None:
    """PostgreSQL: a transaction-scoped advisory lock (released at commit or rollback).
    SQLite serializes write transactions anyway."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


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
    _lock_awards()
    normalized = user.email_normalized or canonical_email(user.email)
    signup = _signup_of(user)
    network = signup.network if signup is not None else ""
    if PromotionClaim.objects.filter(email_normalized=normalized).exists():
        return _refuse(user, WITHHELD_CLAIMED)
    if _network_promotions_exhausted(network, now):
        return _refuse(user, WITHHELD_NETWORK_PROMOTIONS)
    for setting, window in (("PROMOTION_CAP_USD_PER_HOUR", dt.timedelta(hours=1)),
                            ("PROMOTION_CAP_USD_PER_DAY", dt.timedelta(days=1))):
        cap = _cap_micros(setting)
        if not cap:
            continue
        granted = PromotionClaim.objects.filter(claimed_at__gt=now - window).aggregate(
            total=Sum("amount_micros"))["total"] or 0
        if granted + amount_micros > cap:
            _pause_promotions(reason=f"{setting} reached: {money.display_usd(granted)} granted "
                                     f"in the last {_window_name(window)}", now=now)
            return _refuse(user, WITHHELD_PAUSED)
    try:
        with transaction.atomic():
            claim = PromotionClaim.objects.create(
                email_normalized=normalized, user=user, amount_micros=amount_micros,
                network=network, claimed_at=now)
    except IntegrityError:  # claimed by a concurrent award for the same address
        return _refuse(user, WITHHELD_CLAIMED)
    return Award(claim=claim, signup=signup)


def _window_name(window: dt.timedelta) -> str:
    return "hour" if window == dt.timedelta(hours=1) else "day"


def _refuse(user: User, reason: str) -> str:
    withhold_promotion(user=user, reason=reason)
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
    ids = list(Promotion.objects.filter(kind=PromotionKind.FIRST_TOKEN, is_active=True)
               .values_list("pk", flat=True))
    if not ids:
        return []
    Promotion.objects.filter(pk__in=ids).update(is_active=False, paused_reason=reason[:255],
                                                paused_at=now, pause_notified_at=None)
    logger.warning("Promotions %s paused: %s", ids, reason)
    transaction.on_commit(partial(_enqueue_pause_notice, ids), robust=True)
    return ids


def _enqueue_pause_notice(promotion_ids: list[int]) -> None:
    from credits.tasks import notify_promotion_paused  # tasks import this module

    try:
        notify_promotion_paused.apply_async((promotion_ids,), retry=False)
    except Exception:  # broker down: send from here rather than lose it
        logger.warning("Could not enqueue the promotion-paused notice; sending it now",
                       exc_info=True)
        notify_staff_promotion_paused(promotion_ids=promotion_ids)


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
    recipients = sorted(set(
        User.objects.filter(is_staff=True, is_active=True).exclude(email="")
        .values_list("email", flat=True)) | {email for _name, email in settings.ADMINS})
    if recipients:
        try:
            send_mail("TokenBank: the sign-up credit paused itself (spend cap)", body,
                      None, recipients)
        except Exception:
            logger.exception("Could not email staff about the paused promotions %s",
                             [p.pk for p in told])
    return len(told)


# --- reads for the user-facing promotion status -------------------------------------


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


# --- review: confirm or claw back ---------------------------------------------------


def confirm_review(*, review: PromotionReview, actor: User, note: str = "") -> PromotionReview:
    """Staff looked and the grant stands. Only a FLAGGED review can be decided
    (ValidationError otherwise)."""
    with transaction.atomic():
        locked = _lock_flagged(review)
        return _decide(locked, status=ReviewStatus.CONFIRMED, actor=actor, note=note)


def claw_back(*, review: PromotionReview, actor: User, reason: str) -> PromotionReview:
    """Void what is left of the flagged promotional grant (a VOID entry carrying
    `reason` and the staff member). Only that grant is touched: purchased or other
    credit never is. Credit held by an in-flight call is voided when the call settles;
    credit already spent stays spent. `clawed_back_micros` records what was voided now."""
    from credits import services  # services import this module

    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("A reason is required to claw credit back.")
    with transaction.atomic():
        locked = _lock_flagged(review)
        voided = 0
        try:
            services.void_grant(grant=locked.grant_id, reason=f"Clawback: {reason}", actor=actor)
            voided = LedgerEntry.objects.filter(
                grant_id=locked.grant_id, entry_type=EntryType.VOID,
                operation_key=f"void:{locked.grant_id}",
            ).aggregate(total=Sum("amount_micros"))["total"] or 0
        except GrantNotActive:
            pass  # already voided (e.g. never verified): nothing left to take
        locked.clawed_back_micros = -voided
        return _decide(locked, status=ReviewStatus.CLAWED_BACK, actor=actor, note=reason)


def _lock_flagged(review: PromotionReview) -> PromotionReview:
    locked = PromotionReview.objects.select_for_update().get(pk=review.pk)
    if locked.status != ReviewStatus.FLAGGED:
        raise ValidationError(f"This review was already decided ({locked.get_status_display()}).")
    return locked


def _decide(review: PromotionReview, *, status: str, actor: User, note: str) -> PromotionReview:
    review.status = status
    review.decided_by = actor
    review.decided_at = timezone.now()
    review.note = (note or "")[:255]
    review.save(update_fields=["status", "decided_by", "decided_at", "note", "clawed_back_micros"])
    return review


# --- email verification -------------------------------------------------------------


def verification_token(user: User) -> str:
    return signing.dumps({"u": user.pk, "e": user.email}, salt=VERIFY_SALT, compress=True)


def verification_url(user: User) -> str:
    path = reverse("accounts:verify_email", kwargs={"token": verification_token(user)})
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
        transaction.on_commit(partial(_enqueue_verification_email, user.pk), robust=True)


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
        transaction.on_commit(partial(_enqueue_verification_email, user.pk), robust=True)
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


def _enqueue_verification_email(user_id: int) -> None:
    from credits.tasks import send_verification_email as task  # tasks import this module

    try:
        task.apply_async((user_id,), retry=False)
    except Exception:
        logger.warning("Could not enqueue the verification email of user %s; sending it now",
                       user_id, exc_info=True)
        send_verification_email_to(user_id=user_id)


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
        user = User.objects.select_for_update().filter(pk=data.get("u")).first()
        if user is None or user.email != data.get("e"):
            raise ValidationError("This verification link is not valid.")
        if user.email_verified_at is None:
            user.email_verified_at = timezone.now()
            user.save(update_fields=["email_verified_at"])
        CreditGrant.objects.filter(user_id=user.pk, awaiting_verification=True).update(
            awaiting_verification=False)
    return user


def void_unverified_promotions(*, now: dt.datetime | None = None) -> int:
    """Void promotional credit still awaiting verification PROMOTION_VERIFICATION_HOURS
    after it was granted. Idempotent (a voided grant is skipped); returns grants voided."""
    from credits import services  # services import this module

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
            User.objects.select_for_update().filter(pk=grant.user_id).first()
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
