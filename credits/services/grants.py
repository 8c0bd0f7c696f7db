"""Grants and debits: credit added as lots, spent soonest-expiring first, voided,
re-dated and expired (taken back: `takebacks`). Each service is one transaction that locks the
user's credit account, then the grants it touches (`locks`), writes entries and the cached
totals together (`writer`), and raises a `credits.exceptions` error with nothing
written when it refuses. Amounts are integers of micro-dollars (`credits.money`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F

from accounts.models import User
from credits.exceptions import GrantNotActive, IdempotencyConflict, InsufficientCredits, InvalidAmount
from credits.models import CreditAccount, CreditGrant, EntryType, GrantKind, LedgerEntry
from credits.services.locks import lock_account, lock_account_and_open_grants, lock_grant
from credits.services.results import UnitFailure
from credits.services.validation import now_or, require_amount, require_text
from credits.services.writer import LedgerWriter, usable_grants
from credits.signals import paid_call_settled

logger = logging.getLogger(__name__)

_DEFAULT = object()


def add_credit(
    *,
    user: User | int,
    amount_micros: int,
    kind: str,
    description: str = "",
    actor: User | None = None,
    expires_at: dt.datetime | object | None = _DEFAULT,
    idempotency_key: str | None = None,
    source_reference: str = "",
    now: dt.datetime | None = None,
    internal_reason: str = "",
) -> CreditGrant:
    """Grant credit as a new lot, with a GRANT entry (a REFUND entry for a REFUND grant).

    `description` is what the customer reads; `internal_reason` (a staff member's why) is
    kept on the grant and its entry for staff only.

    Promotional credit expires PROMOTION_EXPIRY_DAYS after the grant unless
    `expires_at` says otherwise; other kinds never expire by default.
    Idempotent on `idempotency_key`: a replay returns the original grant; the
    same key with other arguments raises IdempotencyConflict.
    """
    require_amount(amount_micros)
    if kind not in GrantKind.values:
        raise InvalidAmount(f"Unknown grant kind {kind!r}.")
    now = now_or(now)
    if expires_at is _DEFAULT:
        expires_at = (
            now + dt.timedelta(days=settings.PROMOTION_EXPIRY_DAYS)
            if kind == GrantKind.PROMOTIONAL
            else None
        )
    if expires_at is not None and expires_at <= now:
        raise InvalidAmount("A grant must expire in the future.")
    with transaction.atomic():
        locked = lock_account(user)
        return grant_locked(
            locked, amount_micros=amount_micros, kind=kind, description=description, actor=actor,
            expires_at=expires_at, idempotency_key=idempotency_key,
            source_reference=source_reference, now=now, internal_reason=internal_reason,
        )


def grant_locked(account: CreditAccount, *, amount_micros: int, kind: str, description: str,
                 actor, expires_at: dt.datetime | None, idempotency_key: str | None,
                 source_reference: str, now: dt.datetime,
                 promotion_variant_id: int | None = None,
                 internal_reason: str = "", extend_days: int | None = None,
                 expiry_cap_at: dt.datetime | None = None) -> CreditGrant:
    """add_credit's body, for a caller that already holds the account's lock (`lock_account`)
    in its own transaction: the promotion's award. `extend_days` (with `expiry_cap_at`)
    makes the expiry "extended while active" (`extend_active_grants`)."""
    key = idempotency_key or f"grant:{uuid.uuid4().hex}"
    existing = CreditGrant.objects.filter(user_id=account.user_id, idempotency_key=key).first()
    if existing is not None:
        if existing.kind != kind or existing.amount_micros != amount_micros:
            raise IdempotencyConflict(
                f"Idempotency key {key!r} was used for a different grant."
            )
        return existing
    grant = CreditGrant.objects.create(
        user_id=account.user_id, kind=kind, amount_micros=amount_micros, remaining_micros=0,
        granted_at=now, expires_at=expires_at, description=description[:255], actor=actor,
        internal_reason=internal_reason[:255], idempotency_key=key, source_reference=source_reference,
        promotion_variant_id=promotion_variant_id, extend_days=extend_days,
        expiry_cap_at=expiry_cap_at,
    )
    if extend_days is not None and not account.has_extending_grants:
        # Paid calls look for extending grants only on accounts marked so (paid_call).
        account.has_extending_grants = True
        CreditAccount.objects.filter(pk=account.pk).update(has_extending_grants=True)
    writer = LedgerWriter(account, operation_key=f"grant:{grant.pk}", now=now, actor=actor,
                          reference=source_reference, internal_reason=internal_reason)
    # Credit given back is a REFUND entry, so statements list it under refunds, not grants.
    entry_type = EntryType.REFUND if kind == GrantKind.REFUND else EntryType.GRANT
    writer.write(entry_type, grant=grant, amount=amount_micros,
                 description=description or f"{grant.get_kind_display()} credit")
    writer.flush()
    return grant


def paid_call(*, account: CreditAccount, amount_micros: int, tokens: int,
              now: dt.datetime) -> None:
    """A paid call was charged (under the account's lock, in its transaction): push the
    expiry of the user's "extended while active" grants, and announce it. No query for an
    account that never had such a grant (every call of most users)."""
    if amount_micros <= 0:
        return
    if account.has_extending_grants:
        extend_active_grants(user_id=account.user_id, now=now)
    paid_call_settled.send(sender=CreditAccount, user_id=account.user_id,
                           amount_micros=amount_micros, tokens=tokens, at=now)


def mark_extending_accounts() -> int:
    """Mark every account holding an "extended while active" grant that is not marked yet
    (one UPDATE; `grant_locked` marks them as it writes the grant). Run by the expiry sweep
    before it expires anything: a grant written by a process still running the code from
    before the mark existed (while a release migrates) is then extended by the next paid
    call, before its expiry can come, and credits_verify finds nothing left to report.
    Returns the accounts marked."""
    holders = CreditGrant.objects.extending().values("user_id")
    return CreditAccount.objects.filter(
        has_extending_grants=False, user_id__in=holders).update(has_extending_grants=True)


def extend_active_grants(*, user_id: int, now: dt.datetime) -> int:
    """Move each live "extended while active" grant's expiry to `extend_days` after `now`,
    never past its `expiry_cap_at` and never earlier than it was. Call under the account's
    lock. One query when the user has none (the usual case). Returns the grants moved."""
    moved = 0
    rows = CreditGrant.objects.extending().filter(
        user_id=user_id, voided_at__isnull=True, expires_at__gt=now,
    ).values_list("pk", "extend_days", "expiry_cap_at", "expires_at")
    for pk, days, cap, old in rows:
        new = now + dt.timedelta(days=days)
        if cap is not None:
            new = min(new, cap)
        if new > old:
            moved += CreditGrant.objects.filter(pk=pk, expires_at=old).update(expires_at=new)
    return moved


@dataclass(frozen=True)
class DebitResult:
    operation_key: str
    amount_micros: int
    balance_micros: int
    entry_ids: tuple[int, ...]


def use_credits(
    *,
    user: User | int,
    amount_micros: int,
    reference: str = "",
    description: str = "",
    idempotency_key: str | None = None,
    actor: User | None = None,
    now: dt.datetime | None = None,
) -> DebitResult:
    """Debit credit now, burning grants down soonest-expiring first.

    Raises InsufficientCredits (nothing written) when the usable, unheld credit
    is short. Idempotent on `idempotency_key`.
    """
    require_amount(amount_micros)
    return _debit(user=user, amount_micros=amount_micros, entry_type=EntryType.USAGE,
                  reference=reference, description=description or "Usage",
                  idempotency_key=idempotency_key, actor=actor, now=now_or(now))


def adjust_credit(
    *,
    user: User | int,
    amount_micros: int,
    reason: str,
    actor: User | None = None,
    idempotency_key: str | None = None,
    expires_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
    internal_reason: str = "",
) -> CreditGrant | DebitResult:
    """A staff correction: positive adds an ADJUSTMENT grant, negative debits.

    `reason` is the line the customer reads; `internal_reason` is for staff only.
    A negative adjustment never takes the balance below zero (InsufficientCredits).
    """
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) or amount_micros == 0:
        raise InvalidAmount("An adjustment is a non-zero integer number of micro-dollars.")
    reason = require_text(reason, name="reason")
    if amount_micros > 0:
        return add_credit(user=user, amount_micros=amount_micros, kind=GrantKind.ADJUSTMENT,
                          description=reason, actor=actor, expires_at=expires_at,
                          idempotency_key=idempotency_key, now=now,
                          internal_reason=internal_reason)
    return _debit(user=user, amount_micros=-amount_micros, entry_type=EntryType.ADJUSTMENT,
                  reference="", description=reason, idempotency_key=idempotency_key,
                  actor=actor, now=now_or(now), internal_reason=internal_reason)


def _debit(*, user: User | int, amount_micros: int, entry_type: str, reference: str,
           description: str, idempotency_key: str | None, actor, now: dt.datetime,
           internal_reason: str = "") -> DebitResult:
    operation_key = f"debit:{idempotency_key}" if idempotency_key else f"debit:{uuid.uuid4().hex}"
    with transaction.atomic():
        locked, grants = lock_account_and_open_grants(user)
        if idempotency_key:
            replay = _replayed_debit(locked.user_id, operation_key, amount_micros, entry_type, reference)
            if replay is not None:
                return replay
        writer = LedgerWriter(locked, operation_key=operation_key, now=now, actor=actor,
                              reference=reference, internal_reason=internal_reason)
        writer.sweep_expired(grants)
        usable = usable_grants(grants, now)
        available = sum(g.free_micros for g in usable)
        if available < amount_micros:
            raise InsufficientCredits(required_micros=amount_micros, available_micros=available)
        to_take = amount_micros
        for grant in usable:
            take = min(grant.free_micros, to_take)
            writer.write(entry_type, grant=grant, amount=-take, description=description)
            to_take -= take
            if to_take == 0:
                break
        entries = writer.flush()
        if entry_type == EntryType.USAGE:
            paid_call(account=locked, amount_micros=amount_micros, tokens=0, now=now)
        return DebitResult(operation_key=operation_key, amount_micros=amount_micros,
                           balance_micros=locked.balance_micros,
                           entry_ids=tuple(e.pk for e in entries if e.entry_type == entry_type))


def _replayed_debit(user_id: int, operation_key: str, amount_micros: int, entry_type: str,
                    reference: str) -> DebitResult | None:
    entries = list(
        LedgerEntry.objects.filter(user_id=user_id, operation_key=operation_key).order_by("id")
    )
    if not entries:
        return None
    own = [e for e in entries if e.entry_type == entry_type]
    if -sum(e.amount_micros for e in own) != amount_micros or any(
        e.reference != reference for e in own
    ) or not own:
        raise IdempotencyConflict(
            f"Idempotency key {operation_key.removeprefix('debit:')!r} was used for a different debit."
        )
    return DebitResult(operation_key=operation_key, amount_micros=amount_micros,
                       balance_micros=own[-1].balance_after_micros,
                       entry_ids=tuple(e.pk for e in own))


def void_grant(
    *,
    grant: CreditGrant | int,
    reason: str,
    actor: User | None = None,
    now: dt.datetime | None = None,
    internal_reason: str = "",
) -> CreditGrant:
    """Void what is left of a grant (VOID entry). Credit held by an in-flight call
    is voided when that hold settles. Raises GrantNotActive if already voided.
    `reason` is the line the customer reads; `internal_reason` is for staff only."""
    reason = require_text(reason, name="reason")
    now = now_or(now)
    with transaction.atomic():
        locked, locked_grant = lock_grant(grant)
        grant_id = locked_grant.pk
        if locked_grant.voided_at is not None:
            raise GrantNotActive(f"Grant #{grant_id} was already voided.")
        writer = LedgerWriter(locked, operation_key=f"void:{grant_id}", now=now, actor=actor,
                              internal_reason=internal_reason)
        free = locked_grant.free_micros
        locked_grant.voided_at = now
        if free > 0:
            writer.write(EntryType.VOID, grant=locked_grant, amount=-free, description=reason)
        else:
            writer.touched_grants[locked_grant.pk] = locked_grant
        writer.flush()
        return locked_grant


def change_grant_expiry(
    *,
    grant: CreditGrant | int,
    expires_at: dt.datetime | None,
    reason: str,
    actor: User | None = None,
    now: dt.datetime | None = None,
    internal_reason: str = "",
) -> CreditGrant:
    """Move a grant's expiry (None: never expires). `reason` is the line the customer reads;
    `internal_reason` is for staff only.

    The grant row holds the current expiry; the history is an EXPIRY_CHANGE entry
    of amount 0 carrying the actor, the reason and the old and new expiry. An
    expiry at or before `now` expires the free remainder at once (EXPIRY entry);
    credit held by an in-flight call expires when its hold settles.
    Raises GrantNotActive for a voided or already expired grant, InvalidAmount
    without a reason or when nothing would change.
    """
    reason = require_text(reason, name="reason")
    now = now_or(now)
    with transaction.atomic():
        locked, locked_grant = lock_grant(grant)
        grant_id = locked_grant.pk
        if locked_grant.voided_at is not None:
            raise GrantNotActive(f"Grant #{grant_id} was voided.")
        old = locked_grant.expires_at
        if old is not None and old <= now:
            raise GrantNotActive(f"Grant #{grant_id} has already expired.")
        if expires_at == old:
            raise InvalidAmount(f"Grant #{grant_id} already expires then.")
        locked_grant.expires_at = expires_at
        locked_grant.save(update_fields=["expires_at"])
        change = f"expiry:{old.isoformat() if old else 'never'}->" + (
            expires_at.isoformat() if expires_at else "never")
        writer = LedgerWriter(locked, operation_key=f"expiry-change:{uuid.uuid4().hex}", now=now,
                              actor=actor, reference=change, internal_reason=internal_reason)
        writer.write(EntryType.EXPIRY_CHANGE, grant=locked_grant, amount=0, description=reason)
        writer.sweep_expired([locked_grant])
        writer.flush()
        return locked_grant


@dataclass(frozen=True)
class ExpiryRun:
    """What one expiry run did: grants expired, users done, and users that failed."""

    expired: int
    users: tuple[int, ...]
    failed: tuple[UnitFailure, ...]


def expire_credits(*, now: dt.datetime | None = None, batch_size: int = 200) -> ExpiryRun:
    """Expire the unheld remainder of every grant whose `expires_at` has passed.

    Works user by user, each in its own short transaction under the same locks as
    debits, so a crash mid-run loses nothing and a re-run (or a concurrent run)
    never expires anything twice: an expired grant has nothing free left. A user that
    fails is logged with its id and returned in `failed`; the run goes on with the others.
    """
    now = now_or(now)
    mark_extending_accounts()
    expired = 0
    done: list[int] = []
    failed: list[UnitFailure] = []
    failed_ids: set[int] = set()
    while True:
        user_ids = list(
            CreditGrant.objects.filter(
                expires_at__lte=now, remaining_micros__gt=F("held_micros"), voided_at__isnull=True
            )
            .exclude(user_id__in=failed_ids)  # else a failing user heads every batch
            .order_by("user_id")
            .values_list("user_id", flat=True)
            .distinct()[:batch_size]
        )
        if not user_ids:
            break
        for user_id in user_ids:
            try:
                expired += _expire_user(user_id, now)
            except SoftTimeLimitExceeded:
                raise  # the task's time is up: the next run carries on
            except Exception as exc:
                logger.exception("Expiry: user %s failed; going on with the others", user_id)
                failed_ids.add(user_id)
                failed.append(UnitFailure(unit=f"user:{user_id}", error=f"{type(exc).__name__}: {exc}"))
            else:
                done.append(user_id)
    if failed:
        logger.error("Expiry: expired %d grants for %d users; %d users failed: %s", expired,
                     len(done), len(failed), [f.unit for f in failed])
    return ExpiryRun(expired=expired, users=tuple(done), failed=tuple(failed))


def _expire_user(user_id: int, now: dt.datetime) -> int:
    with transaction.atomic():
        locked = lock_account(user_id)
        grants = list(
            CreditGrant.objects.select_for_update(no_key=True)
            .filter(user_id=user_id, expires_at__lte=now, remaining_micros__gt=F("held_micros"))
            .order_by("id")
        )
        writer = LedgerWriter(locked, operation_key=f"expire:{uuid.uuid4().hex}", now=now)
        writer.sweep_expired(grants)
        writer.flush()
        return len(writer.entries)


