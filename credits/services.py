"""The credit ledger's rules. The only code that writes grants, holds and entries.

Every service is one database transaction that locks the user's row first,
then the grants it touches in id order (so concurrent calls queue instead of
deadlocking), writes the entries and the cached balance together, and raises a
`credits.exceptions` error with nothing written when it refuses.

Amounts are integers of micro-dollars; see `credits.money` for the rounding rule.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import User
from credits import abuse, money, notifications
from credits.exceptions import (
    CaptureExceedsHold,
    GrantNotActive,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    UnknownUser,
)
from credits.models import CreditGrant, CreditHold, EntryType, GrantKind, HoldStatus, LedgerEntry
from credits.selectors import (  # noqa: F401  (get_user_credits is part of this API)
    PromotionStatus,
    get_user_credits,
    promotion_status,
    promotion_terms,
)

logger = logging.getLogger(__name__)

FIRST_TOKEN_PROMOTION_KEY = "promotion:first-token"
_DEFAULT = object()


# --- small helpers -------------------------------------------------------------


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else timezone.now()


def _require_amount(value: object, *, name: str = "amount_micros", allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount(f"{name} must be an integer number of micro-dollars, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidAmount(f"{name} must be {'zero or ' if allow_zero else ''}positive, got {value}.")
    return value


def _require_text(value: str | None, *, name: str) -> str:
    text = (value or "").strip()
    if not text:
        raise InvalidAmount(f"A {name} is required.")
    return text


def _user_id(user: User | int) -> int:
    if isinstance(user, User):
        return user.pk
    if isinstance(user, bool) or not isinstance(user, int):
        raise UnknownUser(f"Unknown user {user!r}.")
    return user


def _lock_user(user: User | int) -> User:
    user_id = _user_id(user)
    # Raw SQL for the two locking reads: they run on every debit (see bench/ledger.py).
    rows = list(User.objects.raw(
        f"SELECT * FROM {User._meta.db_table} WHERE id = %s{_for_update()}", [user_id]))
    if not rows:
        raise UnknownUser(f"Unknown user {user_id}.")
    return rows[0]


def _for_update(of: str = "") -> str:
    if not connection.features.has_select_for_update:
        return ""  # SQLite: transactions are serialized (BEGIN IMMEDIATE), nothing to lock
    return f" FOR UPDATE OF {of}" if of else " FOR UPDATE"


def _lock_open_grants(user_id: int) -> list[CreditGrant]:
    return list(CreditGrant.objects.raw(
        f"SELECT * FROM {CreditGrant._meta.db_table} WHERE user_id = %s AND remaining_micros > 0 "
        f"ORDER BY id{_for_update()}", [user_id]))


_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def _lock_grant(grant: CreditGrant | int) -> tuple[User, CreditGrant]:
    """Lock a grant's user, then the grant: the order every service takes. In a transaction."""
    grant_id = grant.pk if isinstance(grant, CreditGrant) else grant
    user_id = CreditGrant.objects.filter(pk=grant_id).values_list("user_id", flat=True).first()
    if user_id is None:
        raise GrantNotActive(f"Unknown grant {grant_id!r}.")
    locked_user = _lock_user(user_id)
    return locked_user, CreditGrant.objects.select_for_update().get(pk=grant_id)


def burn_down_order(grants: Iterable[CreditGrant]) -> list[CreditGrant]:
    """Soonest-expiring first, never-expiring last, ties oldest first."""
    return sorted(grants, key=lambda g: (g.expires_at or _NEVER, g.granted_at, g.pk))


class _Writer:
    """Collects the entries of one service call and keeps the cached totals in step."""

    def __init__(self, user: User, *, operation_key: str, now: dt.datetime, actor=None,
                 reference: str = ""):
        self.user = user
        self.operation_key = operation_key
        self.now = now
        self.actor = actor
        self.reference = reference
        self.entries: list[LedgerEntry] = []
        self.touched_grants: dict[int, CreditGrant] = {}
        self.balance_before = user.credit_balance
        self.statements: list[tuple[str, list]] = []  # hold rows written with the entries

    def insert_hold(self, hold: CreditHold) -> None:
        self.statements.append(_insert_sql(CreditHold, [hold]))
        hold._state.adding = False
        hold._state.db = connection.alias

    def update_hold(self, hold: CreditHold, *fields: str) -> None:
        model_fields = [CreditHold._meta.get_field(name) for name in fields]
        self.statements.append((
            f"UPDATE {CreditHold._meta.db_table} SET "
            + ", ".join(f"{f.column} = %s" for f in model_fields)
            + f" WHERE {CreditHold._meta.pk.column} = %s",
            [f.get_db_prep_save(getattr(hold, f.attname), connection) for f in model_fields]
            + [CreditHold._meta.pk.get_db_prep_value(hold.pk, connection)],
        ))

    def write(self, entry_type: str, *, grant: CreditGrant, amount: int = 0, held_change: int = 0,
              hold: CreditHold | None = None, description: str = "", key_suffix: str = "") -> None:
        grant.remaining_micros += amount
        grant.held_micros += held_change
        self.user.credit_balance += amount
        self.user.credit_held += held_change
        self.touched_grants[grant.pk] = grant
        seq = len(self.entries)
        key = self.operation_key + (f"#{seq}" if seq else "") + key_suffix
        self.entries.append(
            LedgerEntry(
                user_id=self.user.pk,
                entry_type=entry_type,
                grant=grant,
                hold=hold,
                amount_micros=amount,
                held_change_micros=held_change,
                balance_after_micros=self.user.credit_balance,
                description=description[:255],
                actor=self.actor,
                reference=self.reference,
                operation_key=self.operation_key,
                idempotency_key=key,
                created_at=self.now,
            )
        )

    def close_released(self, grant: CreditGrant, released: int, hold: CreditHold | None) -> None:
        """Credit released onto a grant that expired or was voided meanwhile goes too."""
        if released <= 0 or grant.is_usable_at(self.now):
            return
        if grant.voided_at is not None:
            self.write(EntryType.VOID, grant=grant, amount=-released, hold=hold,
                       description=f"Voided ${money.format_usd(released)} released from a hold")
        else:
            self.write(EntryType.EXPIRY, grant=grant, amount=-released, hold=hold,
                       description=f"Expired ${money.format_usd(released)} released from a hold")

    def sweep_expired(self, grants: Iterable[CreditGrant]) -> None:
        """Expire the free part of grants past their expiry (lazily, under the same lock)."""
        for grant in grants:
            if grant.expires_at is not None and grant.expires_at <= self.now and grant.free_micros > 0:
                self.write(EntryType.EXPIRY, grant=grant, amount=-grant.free_micros,
                           description=_expiry_description(grant))

    def flush(self) -> list[LedgerEntry]:
        """Write the hold, grant and user rows and the entries.

        Plain SQL by primary key (Model.save() costs more than the statement on this
        benchmarked path); on PostgreSQL all of it goes in one statement (data-modifying
        CTEs), elsewhere one statement each.
        """
        statements = list(self.statements)
        statements += [
            (f"UPDATE {CreditGrant._meta.db_table} SET remaining_micros = %s, held_micros = %s, "
             "voided_at = %s WHERE id = %s",
             [g.remaining_micros, g.held_micros,
              connection.ops.adapt_datetimefield_value(g.voided_at), g.pk])
            for g in self.touched_grants.values()
        ]
        statements.append((
            f"UPDATE {User._meta.db_table} SET credit_balance = %s, credit_held = %s WHERE id = %s",
            [self.user.credit_balance, self.user.credit_held, self.user.pk],
        ))
        entries_sql, entries_params = (
            _insert_sql(LedgerEntry, self.entries, returning="id") if self.entries else ("", [])
        )
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                ctes = ", ".join(f"w{i} AS ({sql} RETURNING 1)" for i, (sql, _) in enumerate(statements))
                cursor.execute(
                    f"WITH {ctes} {entries_sql or 'SELECT 1'}",
                    [p for _, params in statements for p in params] + entries_params,
                )
            else:
                for sql, params in statements:
                    cursor.execute(sql, params)
                if entries_sql:
                    cursor.execute(entries_sql, entries_params)
            ids = [row[0] for row in cursor.fetchall()] if entries_sql else []
        for entry, pk in zip(self.entries, ids, strict=True):
            entry.pk = pk
            entry._state.adding = False
            entry._state.db = connection.alias
        if self.user.credit_balance < self.balance_before and any(
            e.entry_type in notifications.SPENDING_ENTRY_TYPES for e in self.entries
        ):
            # No query: at most an enqueue after commit when a threshold is crossed.
            notifications.balance_changed(user_id=self.user.pk, before_micros=self.balance_before,
                                          after_micros=self.user.credit_balance)
        return self.entries


def _insert_sql(model, instances: list, returning: str = "") -> tuple[str, list]:
    """A multi-row INSERT for `instances` (primary keys set by the caller or the database)."""
    fields = [f for f in model._meta.concrete_fields
              if not (f.primary_key and getattr(instances[0], f.attname) is None)]
    params = [f.get_db_prep_save(getattr(obj, f.attname), connection)
              for obj in instances for f in fields]
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (f"INSERT INTO {model._meta.db_table} ({', '.join(f.column for f in fields)}) "
           f"VALUES {', '.join([row] * len(instances))}")
    return sql + (f" RETURNING {returning}" if returning else ""), params


def _expiry_description(grant: CreditGrant) -> str:
    return (f"Expired ${money.format_usd(grant.free_micros)} of "
            f"{grant.get_kind_display().lower()} credit #{grant.pk}")


def _usable_grants(grants: Iterable[CreditGrant], now: dt.datetime) -> list[CreditGrant]:
    # Spendable: credit awaiting an email verification is not drawn by new debits or holds.
    return [g for g in burn_down_order(grants) if g.is_spendable_at(now) and g.free_micros > 0]


# --- grants --------------------------------------------------------------------


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
) -> CreditGrant:
    """Grant credit as a new lot, with a GRANT entry.

    Promotional credit expires PROMOTION_EXPIRY_DAYS after the grant unless
    `expires_at` says otherwise; other kinds never expire by default.
    Idempotent on `idempotency_key`: a replay returns the original grant; the
    same key with other arguments raises IdempotencyConflict.
    """
    _require_amount(amount_micros)
    if kind not in GrantKind.values:
        raise InvalidAmount(f"Unknown grant kind {kind!r}.")
    now = _now(now)
    if expires_at is _DEFAULT:
        expires_at = (
            now + dt.timedelta(days=settings.PROMOTION_EXPIRY_DAYS)
            if kind == GrantKind.PROMOTIONAL
            else None
        )
    if expires_at is not None and expires_at <= now:
        raise InvalidAmount("A grant must expire in the future.")
    with transaction.atomic():
        locked = _lock_user(user)
        return _grant_locked(
            locked, amount_micros=amount_micros, kind=kind, description=description, actor=actor,
            expires_at=expires_at, idempotency_key=idempotency_key,
            source_reference=source_reference, now=now,
        )


def _grant_locked(user: User, *, amount_micros: int, kind: str, description: str, actor,
                  expires_at: dt.datetime | None, idempotency_key: str | None,
                  source_reference: str, now: dt.datetime,
                  promotion_variant_id: int | None = None) -> CreditGrant:
    key = idempotency_key or f"grant:{uuid.uuid4().hex}"
    existing = CreditGrant.objects.filter(user_id=user.pk, idempotency_key=key).first()
    if existing is not None:
        if existing.kind != kind or existing.amount_micros != amount_micros:
            raise IdempotencyConflict(
                f"Idempotency key {key!r} was used for a different grant."
            )
        return existing
    grant = CreditGrant.objects.create(
        user_id=user.pk, kind=kind, amount_micros=amount_micros, remaining_micros=0,
        granted_at=now, expires_at=expires_at, description=description[:255], actor=actor,
        idempotency_key=key, source_reference=source_reference,
        promotion_variant_id=promotion_variant_id,
    )
    writer = _Writer(user, operation_key=f"grant:{grant.pk}", now=now, actor=actor,
                     reference=source_reference)
    writer.write(EntryType.GRANT, grant=grant, amount=amount_micros,
                 description=description or f"{grant.get_kind_display()} credit")
    writer.flush()
    return grant


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
    _require_amount(amount_micros)
    return _debit(user=user, amount_micros=amount_micros, entry_type=EntryType.USAGE,
                  reference=reference, description=description or "Usage",
                  idempotency_key=idempotency_key, actor=actor, now=_now(now))


def adjust_credit(
    *,
    user: User | int,
    amount_micros: int,
    reason: str,
    actor: User | None = None,
    idempotency_key: str | None = None,
    expires_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> CreditGrant | DebitResult:
    """A staff correction: positive adds an ADJUSTMENT grant, negative debits.

    A negative adjustment never takes the balance below zero (InsufficientCredits).
    """
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) or amount_micros == 0:
        raise InvalidAmount("An adjustment is a non-zero integer number of micro-dollars.")
    reason = _require_text(reason, name="reason")
    if amount_micros > 0:
        return add_credit(user=user, amount_micros=amount_micros, kind=GrantKind.ADJUSTMENT,
                          description=reason, actor=actor, expires_at=expires_at,
                          idempotency_key=idempotency_key, now=now)
    return _debit(user=user, amount_micros=-amount_micros, entry_type=EntryType.ADJUSTMENT,
                  reference="", description=reason, idempotency_key=idempotency_key,
                  actor=actor, now=_now(now))


def _debit(*, user: User | int, amount_micros: int, entry_type: str, reference: str,
           description: str, idempotency_key: str | None, actor, now: dt.datetime) -> DebitResult:
    operation_key = f"debit:{idempotency_key}" if idempotency_key else f"debit:{uuid.uuid4().hex}"
    with transaction.atomic():
        locked = _lock_user(user)
        if idempotency_key:
            replay = _replayed_debit(locked.pk, operation_key, amount_micros, entry_type, reference)
            if replay is not None:
                return replay
        grants = _lock_open_grants(locked.pk)
        writer = _Writer(locked, operation_key=operation_key, now=now, actor=actor,
                         reference=reference)
        writer.sweep_expired(grants)
        usable = _usable_grants(grants, now)
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
        return DebitResult(operation_key=operation_key, amount_micros=amount_micros,
                           balance_micros=locked.credit_balance,
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
) -> CreditGrant:
    """Void what is left of a grant (VOID entry). Credit held by an in-flight call
    is voided when that hold settles. Raises GrantNotActive if already voided."""
    reason = _require_text(reason, name="reason")
    now = _now(now)
    with transaction.atomic():
        locked, locked_grant = _lock_grant(grant)
        grant_id = locked_grant.pk
        if locked_grant.voided_at is not None:
            raise GrantNotActive(f"Grant #{grant_id} was already voided.")
        writer = _Writer(locked, operation_key=f"void:{grant_id}", now=now, actor=actor)
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
) -> CreditGrant:
    """Move a grant's expiry (None: never expires).

    The grant row holds the current expiry; the history is an EXPIRY_CHANGE entry
    of amount 0 carrying the actor, the reason and the old and new expiry. An
    expiry at or before `now` expires the free remainder at once (EXPIRY entry);
    credit held by an in-flight call expires when its hold settles.
    Raises GrantNotActive for a voided or already expired grant, InvalidAmount
    without a reason or when nothing would change.
    """
    reason = _require_text(reason, name="reason")
    now = _now(now)
    with transaction.atomic():
        locked, locked_grant = _lock_grant(grant)
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
        writer = _Writer(locked, operation_key=f"expiry-change:{uuid.uuid4().hex}", now=now,
                         actor=actor, reference=change)
        writer.write(EntryType.EXPIRY_CHANGE, grant=locked_grant, amount=0, description=reason)
        writer.sweep_expired([locked_grant])
        writer.flush()
        return locked_grant


@dataclass(frozen=True)
class TakeBackResult:
    taken_micros: int
    shortfall_micros: int  # already spent or held: could not be taken back


def take_back_credit(
    *,
    grant: CreditGrant | int,
    amount_micros: int,
    reason: str,
    idempotency_key: str,
    actor: User | None = None,
    now: dt.datetime | None = None,
) -> TakeBackResult:
    """Take credit back from one grant (a payment refund, a clawback) with a REFUND entry.

    Takes at most the grant's unheld remainder: never below zero, never from any
    other grant. Returns what was taken and what could not be. Idempotent on
    `idempotency_key` (a replay returns the original result).
    """
    _require_amount(amount_micros)
    reason = _require_text(reason, name="reason")
    now = _now(now)
    operation_key = f"take-back:{idempotency_key}"
    with transaction.atomic():
        locked, locked_grant = _lock_grant(grant)
        grant_id = locked_grant.pk
        previous = list(LedgerEntry.objects.filter(user_id=locked.pk, operation_key=operation_key))
        if previous:
            taken = -sum(e.amount_micros for e in previous)
            requested = int(previous[0].reference.rpartition(":")[2] or 0)
            if previous[0].grant_id != grant_id or requested != amount_micros:
                raise IdempotencyConflict(
                    f"Idempotency key {idempotency_key!r} was used for another take-back."
                )
            return TakeBackResult(taken_micros=taken, shortfall_micros=amount_micros - taken)
        taken = min(amount_micros, locked_grant.free_micros)
        # The requested amount rides in the reference so a replay can be checked.
        writer = _Writer(locked, operation_key=operation_key, now=now, actor=actor,
                         reference=f"take-back:{grant_id}:{amount_micros}")
        writer.write(EntryType.REFUND, grant=locked_grant, amount=-taken, description=reason)
        writer.flush()
        return TakeBackResult(taken_micros=taken, shortfall_micros=amount_micros - taken)


def expire_credits(*, now: dt.datetime | None = None, batch_size: int = 200) -> int:
    """Expire the unheld remainder of every grant whose `expires_at` has passed.

    Works user by user, each in its own short transaction under the same locks as
    debits, so a crash mid-run loses nothing and a re-run (or a concurrent run)
    never expires anything twice: an expired grant has nothing free left.
    Returns the number of grants it expired.
    """
    now = _now(now)
    expired = 0
    while True:
        user_ids = list(
            CreditGrant.objects.filter(
                expires_at__lte=now, remaining_micros__gt=F("held_micros"), voided_at__isnull=True
            )
            .order_by("user_id")
            .values_list("user_id", flat=True)
            .distinct()[:batch_size]
        )
        if not user_ids:
            return expired
        for user_id in user_ids:
            expired += _expire_user(user_id, now)


def _expire_user(user_id: int, now: dt.datetime) -> int:
    with transaction.atomic():
        locked = _lock_user(user_id)
        grants = list(
            CreditGrant.objects.select_for_update()
            .filter(user_id=user_id, expires_at__lte=now, remaining_micros__gt=F("held_micros"))
            .order_by("id")
        )
        writer = _Writer(locked, operation_key=f"expire:{uuid.uuid4().hex}", now=now)
        writer.sweep_expired(grants)
        writer.flush()
        return len(writer.entries)


# --- holds ---------------------------------------------------------------------


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
    _require_amount(amount_micros)
    now = _now(now)
    hold_id = uuid.uuid4()
    key = idempotency_key or hold_id.hex
    with transaction.atomic():
        locked = _lock_user(user)
        existing = idempotency_key and CreditHold.objects.filter(
            user_id=locked.pk, idempotency_key=key).first()
        if existing:
            if existing.amount_micros != amount_micros or existing.reference != reference:
                raise IdempotencyConflict(f"Idempotency key {key!r} was used for another hold.")
            return existing
        grants = _lock_open_grants(locked.pk)
        writer = _Writer(locked, operation_key=f"hold:{hold_id}", now=now, reference=reference)
        writer.sweep_expired(grants)
        usable = _usable_grants(grants, now)
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
            id=hold_id, user_id=locked.pk, amount_micros=amount_micros, pending_promotion_micros=pending,
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


def _pending_promotion_room(user: User, now: dt.datetime) -> int:
    status = promotion_status(user, now=now)
    if not status.eligible:
        return 0
    already = (
        CreditHold.objects.filter(user_id=user.pk, status=HoldStatus.ACTIVE)
        .aggregate(total=Sum("pending_promotion_micros"))["total"]
        or 0
    )
    return max(0, status.amount_micros - already)


def _lock_held_grants(hold: CreditHold) -> list[CreditGrant]:
    """The grants this hold reserves credit on, locked, each with `reserved_micros`."""
    grants = CreditGrant._meta.db_table
    entries = LedgerEntry._meta.db_table
    rows = CreditGrant.objects.raw(
        f"SELECT g.*, a.reserved_micros FROM {grants} g JOIN ("
        f"  SELECT grant_id, CAST(SUM(held_change_micros) AS BIGINT) AS reserved_micros FROM {entries}"
        f"  WHERE hold_id = %s AND entry_type = %s GROUP BY grant_id"
        f") a ON a.grant_id = g.id ORDER BY g.id{_for_update(of='g')}",
        [CreditHold._meta.pk.get_db_prep_value(hold.pk, connection), EntryType.HOLD],
    )
    return [g for g in rows if g.reserved_micros]


def _lock_hold(hold: CreditHold | uuid.UUID | str) -> tuple[User, CreditHold]:
    if isinstance(hold, CreditHold):
        hold_id, user_id = hold.pk, hold.user_id
    else:
        hold_id = hold
        user_id = CreditHold.objects.filter(pk=hold_id).values_list("user_id", flat=True).first()
    if user_id is None:
        raise HoldNotActive(f"Unknown hold {hold_id!r}.")
    locked_user = _lock_user(user_id)
    # Every change to a hold happens under its user's lock, taken just above.
    rows = list(CreditHold.objects.raw(
        f"SELECT * FROM {CreditHold._meta.db_table} WHERE id = %s AND user_id = %s",
        [CreditHold._meta.pk.get_db_prep_value(hold_id, connection), user_id]))
    locked_hold = rows[0] if rows else None
    if locked_hold is None:
        raise HoldNotActive(f"Unknown hold {hold_id!r}.")
    return locked_user, locked_hold


def capture(
    *,
    hold: CreditHold | uuid.UUID | str,
    amount_micros: int,
    description: str = "",
    now: dt.datetime | None = None,
) -> CreditHold:
    """Charge `amount_micros` (at most the hold) and release the rest.

    Always succeeds for the reserved part, even if a grant expired meanwhile.
    The part reserved against a promotion that was never granted cannot be
    charged (InsufficientCredits). Capturing again with the same amount returns
    the captured hold; anything else on a settled hold raises HoldNotActive.
    The returned hold carries `balance_after_micros`, the user's balance after it.
    """
    _require_amount(amount_micros, allow_zero=True)
    now = _now(now)
    with transaction.atomic():
        locked_user, locked_hold = _lock_hold(hold)
        if locked_hold.status == HoldStatus.CAPTURED and locked_hold.captured_micros == amount_micros:
            return locked_hold
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
        _settle(locked_user, locked_hold, charge=amount_micros, now=now,
                description=description or "Usage")
        return locked_hold


def release(*, hold: CreditHold | uuid.UUID | str, now: dt.datetime | None = None) -> CreditHold:
    """Release a hold without charging. Raises HoldNotActive if it was settled."""
    now = _now(now)
    with transaction.atomic():
        locked_user, locked_hold = _lock_hold(hold)
        if not locked_hold.is_active:
            raise HoldNotActive(f"Hold {locked_hold.pk} is already {locked_hold.status.lower()}.")
        _settle(locked_user, locked_hold, charge=None, now=now, description="Released hold")
        return locked_hold


def _settle(user: User, hold: CreditHold, *, charge: int | None, now: dt.datetime,
            description: str) -> None:
    grants = _lock_held_grants(hold)
    op = "capture" if charge is not None else "release"
    writer = _Writer(user, operation_key=f"{op}:{hold.pk}", now=now, reference=hold.reference)
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
        writer.close_released(grant, reserved - take, hold)
    hold.status = HoldStatus.CAPTURED if charge is not None else HoldStatus.RELEASED
    hold.captured_micros = charge or 0
    hold.settled_at = now
    writer.update_hold(hold, "status", "captured_micros", "settled_at")
    writer.flush()
    hold.balance_after_micros = user.credit_balance  # saves callers a read


def release_stale_holds(
    *, older_than_seconds: int | None = None, now: dt.datetime | None = None
) -> int:
    """Release holds of calls that died without settling. Safe to run concurrently."""
    now = _now(now)
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


# --- the first-token promotion -------------------------------------------------


def check_promotion_eligibility(
    *, user: User | int, now: dt.datetime | None = None
) -> tuple[bool, float]:
    """(eligible now, seconds remaining in the window)."""
    target = user if isinstance(user, User) else User.objects.filter(pk=_user_id(user)).first()
    if target is None:
        raise UnknownUser(f"Unknown user {user!r}.")
    status = promotion_status(target, now=now)
    return status.eligible, status.seconds_remaining


def apply_first_token_promotion(
    *, user: User | int, now: dt.datetime | None = None
) -> CreditGrant | None:
    """Grant the first-token promotion iff the user's first token came within the
    window of their assigned promotion (`promotion_terms`; inclusive) while that
    promotion is active. The grant records the variant. Exactly once per user:
    the grant's idempotency key is unique per user in the database. Holds made
    against the pending promotion are moved onto the new grant.
    Returns the grant, or None when the user did not earn it.
    """
    now = _now(now)
    with transaction.atomic():
        locked = _lock_user(user)
        if locked.promotion_claimed:
            return CreditGrant.objects.get(user_id=locked.pk, idempotency_key=FIRST_TOKEN_PROMOTION_KEY)
        if locked.first_token_at is None:
            return None
        terms = promotion_terms(locked)
        in_window = locked.first_token_at - locked.date_joined <= dt.timedelta(
            seconds=terms.window_seconds
        )
        # An inactive promotion (kill switch) awards nothing from now on.
        if not (in_window and locked.promotion_eligible and terms.active):
            if locked.promotion_eligible:
                locked.promotion_eligible = False
                locked.save(update_fields=["promotion_eligible"])
            return None
        # Abuse controls: one claim per normalized email, per-network limit, spend caps.
        award = abuse.reserve_award(user=locked, amount_micros=terms.amount_micros, now=now)
        if isinstance(award, str):
            return None
        grant = _grant_locked(
            locked, amount_micros=terms.amount_micros, kind=GrantKind.PROMOTIONAL,
            description="First-token promotion", actor=None,
            expires_at=now + dt.timedelta(days=terms.expiry_days),
            idempotency_key=FIRST_TOKEN_PROMOTION_KEY, source_reference="first-token", now=now,
            promotion_variant_id=terms.variant_id,
        )
        locked.promotion_claimed = True
        locked.save(update_fields=["promotion_claimed"])
        abuse.finish_award(user=locked, award=award, grant=grant, now=now)
        # Awaiting verification or not, the call that earned it may draw on it.
        _back_pending_holds(locked, grant, now)
        notifications.promotion_granted(user_id=locked.pk)  # emailed after commit
        return grant


def _back_pending_holds(user: User, grant: CreditGrant, now: dt.datetime) -> None:
    pending = list(
        CreditHold.objects.select_for_update()
        .filter(user_id=user.pk, status=HoldStatus.ACTIVE, pending_promotion_micros__gt=0)
        .order_by("created_at", "pk")
    )
    if not pending:
        return
    grant.refresh_from_db()
    writer = _Writer(user, operation_key=f"promotion-backing:{grant.pk}", now=now)
    for hold in pending:
        take = min(hold.pending_promotion_micros, grant.free_micros)
        if take:
            writer.reference = hold.reference  # each entry traces back to its call
            writer.write(EntryType.HOLD, grant=grant, held_change=take, hold=hold,
                         description="Hold moved onto the first-token promotion")
        hold.pending_promotion_micros -= take
        hold.save(update_fields=["pending_promotion_micros"])
    writer.flush()


# --- pricing and reconciliation --------------------------------------------------


def calculate_inference_cost(
    *,
    input_tokens: int,
    output_tokens: int,
    input_price_per_million_micros: int,
    output_price_per_million_micros: int,
) -> int:
    """Micro-dollars for one call; see `credits.money` for the one rounding rule."""
    try:
        return money.cost_micros(
            input_tokens=input_tokens, output_tokens=output_tokens,
            input_price_per_million_micros=input_price_per_million_micros,
            output_price_per_million_micros=output_price_per_million_micros,
        )
    except ValueError as exc:
        raise InvalidAmount(str(exc)) from exc


@dataclass(frozen=True)
class Mismatch:
    user_id: int
    what: str
    expected: int
    found: int

    def __str__(self) -> str:
        return f"user {self.user_id}: {self.what}: expected {self.expected}, found {self.found}"


def verify_balances(*, user_ids: Iterable[int] | None = None) -> list[Mismatch]:
    """Check the cached totals against the ledger, for every user (or some).

    balance == sum of entries == sum of grants' remaining; held == sum of held
    changes == sum of grants' held == sum of active holds' reserved part; and
    each grant's remaining/held == its own entries.
    """
    users = User.objects.all()
    grants = CreditGrant.objects.all()
    entries = LedgerEntry.objects.all()
    holds = CreditHold.objects.filter(status=HoldStatus.ACTIVE)
    if user_ids is not None:
        ids = list(user_ids)
        users, grants = users.filter(pk__in=ids), grants.filter(user_id__in=ids)
        entries, holds = entries.filter(user_id__in=ids), holds.filter(user_id__in=ids)

    def per_user(qs, **sums) -> dict[int, dict[str, int]]:
        rows = qs.order_by().values("user_id").annotate(**{k: Sum(v) for k, v in sums.items()})
        return {r["user_id"]: r for r in rows}

    entry_sums = per_user(entries, balance="amount_micros", held="held_change_micros")
    grant_sums = per_user(grants, balance="remaining_micros", held="held_micros")
    hold_sums = per_user(holds, amount="amount_micros", pending="pending_promotion_micros")

    problems: list[Mismatch] = []
    for user_id, balance, held in users.values_list("pk", "credit_balance", "credit_held"):
        e = entry_sums.get(user_id, {})
        g = grant_sums.get(user_id, {})
        h = hold_sums.get(user_id, {})
        checks = [
            ("balance vs sum of entries", e.get("balance") or 0, balance),
            ("balance vs sum of grants' remaining", g.get("balance") or 0, balance),
            ("held vs sum of entries' held changes", e.get("held") or 0, held),
            ("held vs sum of grants' held", g.get("held") or 0, held),
            ("held vs active holds", (h.get("amount") or 0) - (h.get("pending") or 0), held),
        ]
        problems += [Mismatch(user_id, what, exp, got) for what, exp, got in checks if exp != got]

    by_grant = {
        r["grant_id"]: r
        for r in entries.filter(grant__isnull=False).order_by().values("grant_id").annotate(
            balance=Sum("amount_micros"), held=Sum("held_change_micros"))
    }
    for grant_id, user_id, remaining, held in grants.values_list(
        "pk", "user_id", "remaining_micros", "held_micros"
    ):
        row = by_grant.get(grant_id, {})
        if (row.get("balance") or 0) != remaining:
            problems.append(Mismatch(user_id, f"grant #{grant_id} remaining vs its entries",
                                     row.get("balance") or 0, remaining))
        if (row.get("held") or 0) != held:
            problems.append(Mismatch(user_id, f"grant #{grant_id} held vs its entries",
                                     row.get("held") or 0, held))
    problems += [
        Mismatch(e.user_id, f"entry #{e.pk} has no grant", 0, e.amount_micros)
        for e in entries.filter(grant__isnull=True)
    ]
    return problems

