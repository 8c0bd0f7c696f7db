"""Take-backs: credit taken back from one grant (a payment refund, a dispute, a clawback).

A take-back takes the grant's free credit at once. Credit of the grant that calls in flight
hold is owed (pending): it stays held, so it is never spendable, and each release or
capture of such a hold takes back what it releases from the grant, in its own transaction
(`take_back_released`, called by holds). What the calls charged was spent: the shortfall.
Each request is a TakeBack row; its REFUND entries point at it (credits_verify checks both).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import transaction

from accounts.models import User
from credits import money
from credits.exceptions import GrantNotActive, IdempotencyConflict
from credits.models import CreditGrant, CreditHold, EntryType, LedgerEntry, TakeBack
from credits.services.grants import grant_locked
from credits.services.locks import lock_grant, user_id_of
from credits.services.validation import now_or, require_amount, require_text
from credits.services.writer import LedgerWriter


@dataclass(frozen=True)
class TakeBackResult:
    taken_micros: int  # taken back so far
    shortfall_micros: int  # already spent: never taken back
    pending_micros: int = 0  # held by calls in flight: taken as their holds release it
    take_back_id: int | None = None

    @property
    def complete(self) -> bool:
        return self.pending_micros == 0


def _result(take_back: TakeBack) -> TakeBackResult:
    return TakeBackResult(taken_micros=take_back.taken_micros,
                          shortfall_micros=take_back.shortfall_micros,
                          pending_micros=take_back.pending_micros, take_back_id=take_back.pk)


def take_back_credit(
    *,
    grant: CreditGrant | int,
    amount_micros: int,
    reason: str,
    idempotency_key: str,
    actor: User | None = None,
    source_reference: str = "",
    now: dt.datetime | None = None,
) -> TakeBackResult:
    """Take `amount_micros` back from one grant, never from another, never below zero.

    Takes the grant's free credit now (REFUND entry); owes what calls in flight hold on it
    (pending, up to what is held and not already owed), taken as those holds settle; the
    rest was spent (shortfall). Locks the account, then the grant. Idempotent on
    `idempotency_key`: a replay returns the take-back's current state; the same key for
    another grant or amount raises IdempotencyConflict.
    """
    require_amount(amount_micros)
    reason = require_text(reason, name="reason")
    now = now_or(now)
    operation_key = f"take-back:{idempotency_key}"
    with transaction.atomic():
        locked, locked_grant = lock_grant(grant)
        grant_id = locked_grant.pk
        existing = TakeBack.objects.filter(user_id=locked.user_id,
                                           idempotency_key=idempotency_key).first()
        if existing is not None:
            if existing.grant_id != grant_id or existing.requested_micros != amount_micros:
                raise IdempotencyConflict(
                    f"Idempotency key {idempotency_key!r} was used for another take-back.")
            return _result(existing)
        legacy = _legacy_replay(locked.user_id, operation_key, grant_id, amount_micros)
        if legacy is not None:
            return legacy
        taken = min(amount_micros, locked_grant.free_micros)
        owed = min(amount_micros - taken,
                   locked_grant.held_micros - locked_grant.pending_take_back_micros)
        take_back = TakeBack.objects.create(
            user_id=locked.user_id, grant_id=grant_id, requested_micros=amount_micros,
            taken_micros=taken, pending_micros=owed,
            shortfall_micros=amount_micros - taken - owed, reason=reason[:255],
            source_reference=source_reference, actor=actor, idempotency_key=idempotency_key,
            created_at=now, completed_at=None if owed else now,
        )
        writer = LedgerWriter(locked, operation_key=operation_key, now=now, actor=actor,
                              reference=f"take-back:{grant_id}")
        if taken:
            writer.write(EntryType.REFUND, grant=locked_grant, amount=-taken, description=reason,
                         take_back=take_back)
        locked_grant.pending_take_back_micros += owed
        writer.touched_grants[grant_id] = locked_grant
        writer.flush()
        return _result(take_back)


def _legacy_replay(user_id: int, operation_key: str, grant_id: int,
                   amount_micros: int) -> TakeBackResult | None:
    """A replay of a take-back made before take-backs had rows: read back from its entries."""
    previous = list(LedgerEntry.objects.filter(user_id=user_id, operation_key=operation_key))
    if not previous:
        return None
    taken = -sum(e.amount_micros for e in previous)
    if previous[0].grant_id != grant_id or taken > amount_micros:
        raise IdempotencyConflict(
            f"Idempotency key {operation_key.removeprefix('take-back:')!r} was used for "
            "another take-back.")
    return TakeBackResult(taken_micros=taken, shortfall_micros=amount_micros - taken)


def take_back_released(writer: LedgerWriter, grant: CreditGrant, *, released_micros: int,
                       hold: CreditHold) -> int:
    """Settle the take-backs owed on `grant` after a hold released `released_micros` of it
    (its CAPTURE or RELEASE entry already written): take back what was released, oldest
    take-back first, with REFUND entries in the settling transaction; what is still owed
    beyond what other holds keep held was charged by this hold: the shortfall. Returns
    what was taken. Call under the account's and the grant's locks (holds._settle does)."""
    if grant.pending_take_back_micros == 0:
        return 0
    open_take_backs = list(TakeBack.objects.filter(grant_id=grant.pk, completed_at__isnull=True)
                           .order_by("created_at", "id"))
    call_reference, writer.reference = writer.reference, f"take-back:{grant.pk}"
    left = released_micros
    for take_back in open_take_backs:
        take = min(take_back.pending_micros, left)
        if take:
            writer.write(EntryType.REFUND, grant=grant, amount=-take, hold=hold,
                         take_back=take_back,
                         description=f"${money.format_usd(take)} released by a call in flight, "
                         f"taken back: {take_back.reason}")
            take_back.pending_micros -= take
            take_back.taken_micros += take
            grant.pending_take_back_micros -= take
            left -= take
    writer.reference = call_reference
    spent = grant.pending_take_back_micros - grant.held_micros
    for take_back in open_take_backs:
        if spent <= 0:
            break
        part = min(take_back.pending_micros, spent)
        take_back.pending_micros -= part
        take_back.shortfall_micros += part
        grant.pending_take_back_micros -= part
        spent -= part
    for take_back in open_take_backs:
        if take_back.pending_micros == 0:
            take_back.completed_at = writer.now
        take_back.save(update_fields=["pending_micros", "taken_micros", "shortfall_micros",
                                      "completed_at"])
    return released_micros - left


@dataclass(frozen=True)
class TakeBackReversal:
    """What reverse_take_back did: the pending part it withdrew and the grant giving back
    what had been taken (None when nothing had been)."""

    cancelled_micros: int
    grant: CreditGrant | None


def reverse_take_back(
    *,
    user: User | int,
    idempotency_key: str,
    reason: str,
    now: dt.datetime | None = None,
) -> TakeBackReversal:
    """Undo a take-back (a dispute the merchant won): withdraw what is still pending, so the
    holds release it to the user, and give back what was taken as a new grant of the same
    kind and expiry (history is never edited; nothing if the grant has expired or was voided
    since). One transaction, locking the account, then the grant.
    Idempotent: a replay returns the same grant. Raises GrantNotActive for an unknown key.
    """
    reason = require_text(reason, name="reason")
    now = now_or(now)
    user_id = user_id_of(user)
    grant_id = TakeBack.objects.filter(user_id=user_id, idempotency_key=idempotency_key) \
        .values_list("grant_id", flat=True).first()
    if grant_id is None:
        raise GrantNotActive(f"No take-back {idempotency_key!r} for user {user_id}.")
    with transaction.atomic():
        locked, locked_grant = lock_grant(grant_id)
        take_back = TakeBack.objects.get(user_id=user_id, idempotency_key=idempotency_key)
        key = f"take-back-reversal:{take_back.pk}"
        done = CreditGrant.objects.filter(user_id=user_id, idempotency_key=key).first()
        cancelled = take_back.pending_micros
        if cancelled:
            take_back.cancelled_micros += cancelled
            take_back.pending_micros = 0
            take_back.completed_at = now
            take_back.save(update_fields=["cancelled_micros", "pending_micros", "completed_at"])
            locked_grant.pending_take_back_micros -= cancelled
            writer = LedgerWriter(locked, operation_key=f"{key}:cancel", now=now)
            writer.touched_grants[grant_id] = locked_grant
            writer.flush()
        if done is not None or take_back.taken_micros == 0:
            return TakeBackReversal(cancelled_micros=cancelled, grant=done)
        if not locked_grant.is_usable_at(now):
            # Taken credit of a grant that has expired or was voided since would be gone now.
            return TakeBackReversal(cancelled_micros=cancelled, grant=None)
        given = grant_locked(
            locked, amount_micros=take_back.taken_micros, kind=locked_grant.kind,
            description=reason, actor=None, expires_at=locked_grant.expires_at,
            idempotency_key=key, source_reference=take_back.source_reference, now=now,
        )
        return TakeBackReversal(cancelled_micros=cancelled, grant=given)
