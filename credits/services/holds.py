"""Holds: credit reserved for a call whose cost is known only afterwards, then
captured (charged) or released. Each service locks the user's credit account first (`locks`)
and writes through the one `writer`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Sum

from accounts.models import User
from credits import money
from credits.exceptions import CaptureExceedsHold, HoldNotActive, IdempotencyConflict, InsufficientCredits
from credits.models import CreditAccount, CreditGrant, CreditHold, EntryType, HoldStatus
from credits.models.promotions import user_promotion_terms
from credits.services.locks import (
    lock_account,
    lock_held_grants,
    lock_hold,
    lock_open_grants,
    lock_pending_holds,
)
from credits.services.takebacks import take_back_released
from credits.services.validation import now_or, require_amount
from credits.services.writer import LedgerWriter, burn_down_order, usable_grants

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settlement:
    """What capture or release did: the settled hold and the user's balance after it."""

    hold: CreditHold
    balance_micros: int


def authorize(
    *,
    user: User | int,
    amount_micros: int,
    reference: str = "",
    idempotency_key: str | None = None,
    allow_pending_promotion: bool = True,
    now: dt.datetime | None = None,
) -> CreditHold:
    """Reserve credit for work whose cost is known only afterwards.

    Reserves unheld, usable credit in burn-down order. A user still inside the
    first-token window may reserve against the pending promotion (up to its
    amount across all their holds). Raises InsufficientCredits, nothing written.
    """
    require_amount(amount_micros)
    now = now_or(now)
    hold_id = uuid.uuid4()
    key = idempotency_key or hold_id.hex
    with transaction.atomic():
        locked = lock_account(user)
        existing = idempotency_key and CreditHold.objects.filter(
            user_id=locked.user_id, idempotency_key=key).first()
        if existing:
            if existing.amount_micros != amount_micros or existing.reference != reference:
                raise IdempotencyConflict(f"Idempotency key {key!r} was used for another hold.")
            return existing
        grants = lock_open_grants(locked.user_id)
        writer = LedgerWriter(locked, operation_key=f"hold:{hold_id}", now=now, reference=reference)
        writer.sweep_expired(grants)
        usable = usable_grants(grants, now)
        available = sum(g.free_micros for g in usable)
        pending = 0
        if available < amount_micros:
            pending_room = (
                _pending_promotion_room(locked, now) if allow_pending_promotion else 0
            )
            if available + pending_room < amount_micros:
                raise InsufficientCredits(required_micros=amount_micros,
                                          available_micros=available + pending_room)
            pending = amount_micros - available
        hold = CreditHold(
            id=hold_id, user_id=locked.user_id, amount_micros=amount_micros, pending_promotion_micros=pending,
            reference=reference, idempotency_key=key, created_at=now,
        )
        writer.insert_hold(hold)
        to_hold = amount_micros - pending
        for grant in usable:
            if to_hold == 0:
                break
            take = min(grant.free_micros, to_hold)
            writer.write(EntryType.HOLD, grant=grant, held_change=take, hold=hold,
                         description=f"Held ${money.format_usd(take)}")
            to_hold -= take
        writer.flush()
        return hold


def _pending_promotion_room(account: CreditAccount, now: dt.datetime) -> int:
    """What the account's user may still reserve against a first-token promotion not yet
    granted. The award locks the user's row, then this account, so it either sees this hold
    (and backs it) or has already claimed, and then the user's flags say so here."""
    user = User.objects.get(pk=account.user_id)
    terms = user_promotion_terms(user)
    if not terms.open_to(user, now=now):
        return 0
    already = (
        CreditHold.objects.filter(user_id=user.pk, status=HoldStatus.ACTIVE)
        .aggregate(total=Sum("pending_promotion_micros"))["total"]
        or 0
    )
    return max(0, terms.amount_micros - already)


def capture(
    *,
    hold: CreditHold | uuid.UUID | str,
    amount_micros: int,
    description: str = "",
    now: dt.datetime | None = None,
) -> Settlement:
    """Charge `amount_micros` (at most the hold) and release the rest.

    Always succeeds for the reserved part, even if a grant expired meanwhile.
    The part reserved against a promotion that was never granted cannot be
    charged (InsufficientCredits). Capturing again with the same amount returns
    its Settlement again; anything else on a settled hold raises HoldNotActive.
    """
    require_amount(amount_micros, allow_zero=True)
    now = now_or(now)
    with transaction.atomic():
        account, locked_hold = lock_hold(hold)
        if locked_hold.status == HoldStatus.CAPTURED and locked_hold.captured_micros == amount_micros:
            return Settlement(hold=locked_hold, balance_micros=account.balance_micros)
        if not locked_hold.is_active:
            raise HoldNotActive(f"Hold {locked_hold.pk} is already {locked_hold.status.lower()}.")
        if amount_micros > locked_hold.amount_micros:
            raise CaptureExceedsHold(
                f"Cannot capture ${money.format_usd(amount_micros)}: the hold is "
                f"${money.format_usd(locked_hold.amount_micros)}."
            )
        backed = locked_hold.amount_micros - locked_hold.pending_promotion_micros
        if amount_micros > backed:
            raise InsufficientCredits(
                required_micros=amount_micros, available_micros=backed,
                message="The first-token promotion this call relied on was not granted.",
            )
        return _settle(account, locked_hold, charge=amount_micros, now=now,
                       description=description or "Usage")


def release(*, hold: CreditHold | uuid.UUID | str, now: dt.datetime | None = None) -> Settlement:
    """Release a hold without charging. Raises HoldNotActive if it was settled."""
    now = now_or(now)
    with transaction.atomic():
        account, locked_hold = lock_hold(hold)
        if not locked_hold.is_active:
            raise HoldNotActive(f"Hold {locked_hold.pk} is already {locked_hold.status.lower()}.")
        return _settle(account, locked_hold, charge=None, now=now, description="Released hold")


def _settle(account: CreditAccount, hold: CreditHold, *, charge: int | None, now: dt.datetime,
            description: str) -> Settlement:
    grants = lock_held_grants(hold)
    op = "capture" if charge is not None else "release"
    writer = LedgerWriter(account, operation_key=f"{op}:{hold.pk}", now=now, reference=hold.reference)
    to_charge = charge or 0
    for grant in burn_down_order(grants):
        reserved = grant.reserved_micros
        take = min(reserved, to_charge)
        to_charge -= take
        if charge is not None:
            writer.write(EntryType.CAPTURE, grant=grant, amount=-take, held_change=-reserved,
                         hold=hold, description=description)
        else:
            writer.write(EntryType.RELEASE, grant=grant, held_change=-reserved, hold=hold,
                         description=description)
        released = reserved - take
        # Refunds owed on this grant take what it releases first, in this transaction, so
        # the refunded credit is never free in between.
        released -= take_back_released(writer, grant, released_micros=released, hold=hold)
        writer.close_released(grant, released, hold)
    hold.status = HoldStatus.CAPTURED if charge is not None else HoldStatus.RELEASED
    hold.captured_micros = charge or 0
    hold.settled_at = now
    writer.update_hold(hold, "status", "captured_micros", "settled_at")
    writer.flush()
    return Settlement(hold=hold, balance_micros=account.balance_micros)


def release_stale_holds(
    *, older_than_seconds: int | None = None, now: dt.datetime | None = None
) -> int:
    """Release holds of calls that died without settling. Safe to run concurrently."""
    now = now_or(now)
    age = settings.STALE_HOLD_SECONDS if older_than_seconds is None else older_than_seconds
    cutoff = now - dt.timedelta(seconds=age)
    stale_ids = list(
        CreditHold.objects.filter(status=HoldStatus.ACTIVE, created_at__lt=cutoff)
        .order_by("created_at")
        .values_list("pk", flat=True)
    )
    released = 0
    for hold_id in stale_ids:
        try:
            release(hold=hold_id, now=now)
        except HoldNotActive:
            continue  # settled meanwhile by its call or another run
        released += 1
    if released:
        logger.warning("Released %d stale credit holds older than %ss", released, age)
    return released


def back_pending_holds(*, account: CreditAccount, grant: CreditGrant, now: dt.datetime) -> None:
    """Move holds made against the not-yet-granted promotion onto its new `grant`, oldest
    first, as far as the grant goes. Call in the transaction that granted it, with the
    account locked (the promotion's award does)."""
    pending = lock_pending_holds(account.user_id)
    if not pending:
        return
    grant.refresh_from_db()
    writer = LedgerWriter(account, operation_key=f"promotion-backing:{grant.pk}", now=now)
    for hold in pending:
        take = min(hold.pending_promotion_micros, grant.free_micros)
        if take:
            writer.reference = hold.reference  # each entry traces back to its call
            writer.write(EntryType.HOLD, grant=grant, held_change=take, hold=hold,
                         description="Hold moved onto the first-token promotion")
        hold.pending_promotion_micros -= take
        hold.save(update_fields=["pending_promotion_micros"])
    writer.flush()


