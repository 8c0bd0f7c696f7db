"""Holds: credit reserved for a call whose cost is known only afterwards, then
captured (charged) or released. Each service locks the user's credit account first (`locks`)
and writes through the one `writer`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model, Q, Sum

from accounts.models import User
from config.rows import cursor as sql_cursor
from config.rows import insert as insert_row
from credits import money
from credits.exceptions import CaptureExceedsHold, HoldNotActive, IdempotencyConflict, InsufficientCredits
from credits.models import CreditAccount, CreditGrant, CreditHold, EntryType, HoldStatus
from credits.models.promotions import user_promotion_terms
from credits.services.grants import paid_call
from credits.services.locks import (
    lock_account_and_open_grants,
    lock_held_grants,
    lock_hold,
    lock_pending_holds,
    lock_settlement,
)
from credits.services.results import UnitFailure
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
    metadata: dict | None = None,
    now: dt.datetime | None = None,
    on_granted: Callable[[], None] | None = None,
) -> CreditHold:
    """Reserve credit for work whose cost is known only afterwards.

    Reserves unheld, usable credit in burn-down order. A user still inside the
    first-token window may reserve against the pending promotion (up to its
    amount across all their holds). `metadata` (JSON) describes the work for whoever
    records it should the stale-hold sweep settle it. Raises InsufficientCredits,
    nothing written.

    `on_granted()` is called under the account's lock once a new hold is certain (its
    credit counted and free), before the hold is written and committed: a caller may start
    the work the hold pays for meanwhile, as long as it delivers nothing before this
    returns. It must be quick and must not raise. It is not called for a refusal or an
    idempotent replay.
    """
    require_amount(amount_micros)
    now = now_or(now)
    with transaction.atomic():
        reserved = _reserve(user, amount_micros, reference=reference,
                            idempotency_key=idempotency_key,
                            allow_pending_promotion=allow_pending_promotion,
                            metadata=metadata, now=now, on_granted=on_granted)
    # A refusal is raised once its transaction has ended with COMMIT (it wrote nothing; the
    # commit only lets go of the locks): a ROLLBACK would make psycopg forget every statement
    # prepared on the connection, and a client calling with no credit left would make each
    # pooled connection plan the ledger's statements again for everyone.
    if isinstance(reserved, InsufficientCredits):
        raise reserved
    return reserved


def _reserve(user, amount_micros: int, *, reference: str, idempotency_key: str | None,
             allow_pending_promotion: bool, metadata: dict | None, now: dt.datetime,
             on_granted: Callable[[], None] | None = None) -> CreditHold | InsufficientCredits:
    """authorize()'s work under the account's lock: the hold, or the refusal (nothing
    written: the writer's rows go out only at `flush`)."""
    hold_id = uuid.uuid4()
    key = idempotency_key or hold_id.hex
    locked, grants = lock_account_and_open_grants(user)
    existing = idempotency_key and CreditHold.objects.filter(
        user_id=locked.user_id, idempotency_key=key).first()
    if existing:
        if existing.amount_micros != amount_micros or existing.reference != reference:
            raise IdempotencyConflict(f"Idempotency key {key!r} was used for another hold.")
        return existing
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
            return InsufficientCredits(required_micros=amount_micros,
                                       available_micros=available + pending_room)
        pending = amount_micros - available
    if on_granted is not None:
        on_granted()
    hold = CreditHold(
        id=hold_id, user_id=locked.user_id, amount_micros=amount_micros, pending_promotion_micros=pending,
        reference=reference, idempotency_key=key, created_at=now, metadata=metadata or {},
    )
    writer.insert(hold)
    to_hold = amount_micros - pending
    for grant in usable:
        if to_hold == 0:
            break
        take = min(grant.free_micros, to_hold)
        writer.write(EntryType.HOLD, grant=grant, held_change=take, hold=hold,
                     description=f"Held ${money.format_usd(take)}")
        to_hold -= take
    writer.flush()
    hold.balance_after_micros = locked.balance_micros  # the writer kept it: expiries included
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
    tokens: int | None = None,
    now: dt.datetime | None = None,
    also_insert: Model | None = None,
) -> Settlement:
    """Charge `amount_micros` (at most the hold) and release the rest. `tokens`: the
    call's delivered tokens, recorded on the hold (its journal may lag by a few).
    `also_insert`: the caller's own new row, inserted with the charge in the ledger's own
    statement (a call's usage record: one commit per call, not two). If it cannot be
    written, the charge is rolled back with it and the error propagates, so the caller
    decides what to retry.

    Always succeeds for the reserved part, even if a grant expired meanwhile.
    The part reserved against a promotion that was never granted cannot be
    charged (InsufficientCredits). Capturing again with the same amount returns
    its Settlement again; anything else on a settled hold raises HoldNotActive.
    """
    require_amount(amount_micros, allow_zero=True)
    now = now_or(now)
    with transaction.atomic():
        account, locked_hold, held_grants = lock_settlement(hold)
        if locked_hold.status == HoldStatus.CAPTURED and locked_hold.captured_micros == amount_micros:
            if also_insert is not None:
                insert_row(also_insert)
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
        if tokens is not None and tokens > locked_hold.delivered_tokens:
            locked_hold.delivered_tokens = tokens
        return _settle(account, locked_hold, charge=amount_micros, now=now,
                       description=description or "Usage", held_grants=held_grants,
                       also_insert=also_insert)


def release(*, hold: CreditHold | uuid.UUID | str, now: dt.datetime | None = None,
            also_insert: Model | None = None) -> Settlement:
    """Release a hold without charging. Raises HoldNotActive if it was settled.
    `also_insert`: as for `capture`."""
    now = now_or(now)
    with transaction.atomic():
        account, locked_hold, held_grants = lock_settlement(hold)
        if not locked_hold.is_active:
            raise HoldNotActive(f"Hold {locked_hold.pk} is already {locked_hold.status.lower()}.")
        return _settle(account, locked_hold, charge=None, now=now, description="Released hold",
                       held_grants=held_grants, also_insert=also_insert)


def _settle(account: CreditAccount, hold: CreditHold, *, charge: int | None, now: dt.datetime,
            description: str, swept: bool = False, held_grants: list[CreditGrant] | None = None,
            also_insert: Model | None = None) -> Settlement:
    grants = lock_held_grants(hold) if held_grants is None else held_grants
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
    hold.swept = swept
    writer.update_hold(hold, "status", "captured_micros", "settled_at", "swept",
                       "delivered_tokens")
    if also_insert is not None:
        writer.insert(also_insert)
    writer.flush()
    if charge:
        paid_call(account=account, amount_micros=charge, tokens=hold.delivered_tokens, now=now)
    return Settlement(hold=hold, balance_micros=account.balance_micros)


def record_progress(*, hold: CreditHold | uuid.UUID | str, delivered_micros: int, tokens: int,
                    now: dt.datetime | None = None) -> bool:
    """Journal a call in flight: `tokens` produced so far and what the part delivered to
    the client is worth (`delivered_micros`, at the call's price by `credits.money`'s rule).

    One short UPDATE of the hold row and no lock on the account: callers write it every few
    tokens. It only moves forward and only on an active hold; a settlement locks the row,
    so the journal it reads cannot change under it. Returns whether it wrote (False: the
    hold was settled meanwhile, by its call or by the stale-hold sweep).
    """
    require_amount(delivered_micros, name="delivered_micros", allow_zero=True)
    require_amount(tokens, name="tokens", allow_zero=True)
    hold_id = hold.pk if isinstance(hold, CreditHold) else hold
    with sql_cursor() as cursor:  # plain SQL: written every few tokens of every stream
        cursor.execute(_journal_sql(), [
            tokens, delivered_micros, connection.ops.adapt_datetimefield_value(now_or(now)),
            CreditHold._meta.pk.get_db_prep_value(hold_id, connection), HoldStatus.ACTIVE, tokens])
        return cursor.rowcount > 0


@functools.cache
def _journal_sql() -> str:
    return (f"UPDATE {CreditHold._meta.db_table} SET delivered_tokens = %s, "
            "delivered_micros = %s, journal_at = %s "
            "WHERE id = %s AND status = %s AND delivered_tokens <= %s")


@dataclass(frozen=True)
class SweptHold:
    """A hold the stale-hold sweep settled: captured for its journal, or released."""

    hold_id: uuid.UUID
    user_id: int
    reference: str
    captured_micros: int
    delivered_tokens: int


@dataclass(frozen=True)
class HoldSweep:
    settled: tuple[SweptHold, ...]
    failed: tuple[UnitFailure, ...]


def release_stale_holds(
    *, older_than_seconds: int | None = None, now: dt.datetime | None = None
) -> HoldSweep:
    """Settle the holds of calls that went silent: no journal write for STALE_HOLD_SECONDS
    (or, for a call that never wrote one, that long since the hold was made).

    Each is captured for what its journal says was delivered (never more than the hold's
    backed part) or released when nothing was, and marked `swept`. Each hold is its own
    transaction: a hold that fails is logged with its id and returned in `failed`, and the
    sweep goes on. Safe to run concurrently, and alongside the calls themselves: a hold
    whose journal moved meanwhile is left alone.
    """
    now = now_or(now)
    age = settings.STALE_HOLD_SECONDS if older_than_seconds is None else older_than_seconds
    cutoff = now - dt.timedelta(seconds=age)
    stale_ids = list(
        CreditHold.objects.filter(status=HoldStatus.ACTIVE)
        .filter(Q(journal_at__lt=cutoff) | Q(journal_at__isnull=True, created_at__lt=cutoff))
        .order_by("created_at")
        .values_list("pk", flat=True)
    )
    settled: list[SweptHold] = []
    failed: list[UnitFailure] = []
    for hold_id in stale_ids:
        try:
            swept = _settle_silent_hold(hold_id, cutoff=cutoff, now=now)
        except HoldNotActive:
            continue  # settled meanwhile by its call or another run
        except SoftTimeLimitExceeded:
            raise  # the task's time is up: the next run carries on
        except Exception as exc:
            logger.exception("Stale-hold sweep: hold %s failed; going on with the others", hold_id)
            failed.append(UnitFailure(unit=f"hold:{hold_id}", error=f"{type(exc).__name__}: {exc}"))
            continue
        if swept is not None:
            settled.append(swept)
    if settled or failed:
        logger.warning("Stale-hold sweep: settled %d silent holds (%d captured), %d failed: %s",
                       len(settled), sum(1 for h in settled if h.captured_micros), len(failed),
                       [f.unit for f in failed])
    return HoldSweep(settled=tuple(settled), failed=tuple(failed))


def _settle_silent_hold(hold_id: uuid.UUID, *, cutoff: dt.datetime, now: dt.datetime) -> SweptHold | None:
    with transaction.atomic():
        account, hold = lock_hold(hold_id)
        if not hold.is_active:
            raise HoldNotActive(f"Hold {hold.pk} is already {hold.status.lower()}.")
        if (hold.journal_at or hold.created_at) >= cutoff:
            return None  # its call wrote a journal since the sweep looked: alive
        backed = hold.amount_micros - hold.pending_promotion_micros
        charge = min(hold.delivered_micros, backed)
        if charge < hold.delivered_micros:
            logger.error("BILLING: hold %s journaled %s micros delivered; the sweep captures its "
                         "backed %s", hold.pk, hold.delivered_micros, charge)
        if charge:
            _settle(account, hold, charge=charge, now=now, swept=True,
                    description=f"Settled by the stale-hold sweep: {hold.delivered_tokens} tokens")
        else:
            _settle(account, hold, charge=None, now=now, swept=True,
                    description="Released by the stale-hold sweep")
        return SweptHold(hold_id=hold.pk, user_id=hold.user_id, reference=hold.reference,
                         captured_micros=charge, delivered_tokens=hold.delivered_tokens)


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


