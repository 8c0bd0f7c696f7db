"""Sign-up checks of the promotion: disposable domains refused, velocity limits that
withhold the sign-up credit (with a reason the user sees).

Counted in the database (SignupRecord, PromotionClaim), so every process shares the
counts and they survive restarts: sign-ups per IP and per network (/24 IPv4, /64 IPv6)
per hour, promotions per network per day. Over one, the sign-up still works but the
promotion is withheld. `check_signup_email` runs through settings.SIGNUP_CHECKS;
`record_signup` runs on accounts' `user_registered` signal, in the sign-up's transaction.
"""

from __future__ import annotations

import datetime as dt

from disposable_email_domains import blocklist as DISPOSABLE_DOMAINS
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.emails import canonical_email, email_domain
from accounts.models import User
from accounts.network import network_of
from credits.models import DomainRuleAction, EmailDomainRule, PromotionClaim, SignupRecord
from credits.promotion.messages import (
    DISPOSABLE_REFUSED,
    WITHHELD_CLAIMED,
    WITHHELD_IP,
    WITHHELD_NETWORK,
    WITHHELD_NETWORK_PROMOTIONS,
)
from credits.services.locks import advisory_lock

SIGNUP_LOCK_KEY = 0x5452_5347  # pg_advisory_xact_lock key of counted sign-ups


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
        advisory_lock(SIGNUP_LOCK_KEY)
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
        elif network_promotions_exhausted(network, now):
            reason = WITHHELD_NETWORK_PROMOTIONS
    record = SignupRecord.objects.create(user=user, email_normalized=normalized, ip=ip or None,
                                         network=network, created_at=now)
    if reason:
        withhold_promotion(user=user, reason=reason)
    return record


def network_promotions_exhausted(network: str, now: dt.datetime) -> bool:
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
