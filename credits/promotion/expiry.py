"""Expiry policy as data: when promotional credit expires.

FIXED (today's rule): `expiry_days` after the grant. EXTENDED_WHILE_ACTIVE: the grant
expires `extension_days` (else `expiry_days`) after the last paid call, never later than
`expiry_cap_days` (else PROMOTION_EXPIRY_CAP_DAYS) after the grant; the ledger moves the
expiry on each paid call (credits.services.grants.extend_active_grants).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings

from credits.models import ExpiryRule


@dataclass(frozen=True)
class GrantExpiry:
    expires_at: dt.datetime
    extend_days: int | None = None
    expiry_cap_at: dt.datetime | None = None

    def grant_kwargs(self) -> dict:
        return {"expires_at": self.expires_at, "extend_days": self.extend_days,
                "expiry_cap_at": self.expiry_cap_at}


def grant_expiry(*, rule: str, expiry_days: int, extension_days: int | None,
                 expiry_cap_days: int | None, now: dt.datetime) -> GrantExpiry:
    """The expiry of a promotional grant made at `now` under this policy."""
    if rule != ExpiryRule.EXTENDED_WHILE_ACTIVE:
        return GrantExpiry(expires_at=now + dt.timedelta(days=expiry_days))
    extend = extension_days or expiry_days
    cap_days = expiry_cap_days or int(settings.PROMOTION_EXPIRY_CAP_DAYS)
    cap = now + dt.timedelta(days=max(cap_days, 1))
    return GrantExpiry(expires_at=min(now + dt.timedelta(days=extend), cap),
                       extend_days=extend, expiry_cap_at=cap)


def terms_expiry(terms, *, now: dt.datetime) -> GrantExpiry:
    """The expiry of a first-token grant under `terms` (PromotionTerms)."""
    return grant_expiry(rule=terms.expiry_rule, expiry_days=terms.expiry_days,
                        extension_days=terms.extension_days,
                        expiry_cap_days=terms.expiry_cap_days, now=now)
