"""Inference rules: metering a call from hold to settlement."""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from inference.signals import first_token_generated


def record_first_token(*, user_id: int, at: dt.datetime | None = None) -> bool:
    """Stamp the user's first token, once, and announce it.

    The conditional UPDATE makes exactly one caller win, however many race; the
    signal's receivers (the promotion) run inside the same transaction, so the
    stamp and the promotion commit or roll back together. Returns True for the
    one call that stamped it.
    """
    at = at or timezone.now()
    with transaction.atomic():
        stamped = User.objects.filter(pk=user_id, first_token_at__isnull=True).update(
            first_token_at=at
        )
        if stamped:
            first_token_generated.send(sender=User, user_id=user_id, first_token_at=at)
        return bool(stamped)
