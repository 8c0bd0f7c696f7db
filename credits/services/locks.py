"""Every lock the ledger takes, one style, in the one order every service follows: the
user's row (only where user rules are decided: the promotion's award, verification), then
the user's credit account, then the grants it touches in id order, so concurrent calls
queue instead of deadlocking. Call inside a transaction. On SQLite write transactions are
serialized (BEGIN IMMEDIATE), so there is nothing to lock.

The locking reads are plain SQL read with config.rows: they run on every debit (see
bench/ledger.py).
"""

from __future__ import annotations

import uuid

from django.db import connection

from accounts.models import User
from config.rows import columns, fetch
from credits.exceptions import GrantNotActive, HoldNotActive, UnknownUser
from credits.models import CreditAccount, CreditGrant, CreditHold, EntryType, HoldStatus, LedgerEntry


def for_update(of: str = "") -> str:
    """FOR NO KEY UPDATE: the ledger never changes a key, and a plain FOR UPDATE would also
    block the KEY SHARE lock that every insert referencing the row takes (an entry or a hold
    naming the user), deadlocking the award (user row, then account) against a call that
    holds the account and inserts its hold."""
    if not connection.features.has_select_for_update:
        return ""
    return f" FOR NO KEY UPDATE OF {of}" if of else " FOR NO KEY UPDATE"


def user_id_of(user: User | int) -> int:
    if isinstance(user, User):
        return user.pk
    if isinstance(user, bool) or not isinstance(user, int):
        raise UnknownUser(f"Unknown user {user!r}.")
    return user


def lock_user(user: User | int) -> User:
    """The user's row, locked, for rules about the user (the promotion's award, email
    verification); taken before the account. Raises UnknownUser."""
    user_id = user_id_of(user)
    rows = fetch(f"SELECT {columns(User, 'u')} FROM {User._meta.db_table} u "
                 f"WHERE u.id = %s{for_update()}", [user_id], User)
    if not rows:
        raise UnknownUser(f"Unknown user {user_id}.")
    return rows[0][0]


def lock_account(user: User | int) -> CreditAccount:
    """The user's credit account, locked: the first lock of every ledger service. Created
    on first use (the sign-up creates it too). Raises UnknownUser."""
    user_id = user_id_of(user)
    sql = (f"SELECT {columns(CreditAccount, 'a')} FROM {CreditAccount._meta.db_table} a "
           f"WHERE a.user_id = %s{for_update()}")
    rows = fetch(sql, [user_id], CreditAccount)
    if not rows:
        if not User.objects.filter(pk=user_id).exists():
            raise UnknownUser(f"Unknown user {user_id}.")
        CreditAccount.objects.bulk_create([CreditAccount(user_id=user_id)], ignore_conflicts=True)
        rows = fetch(sql, [user_id], CreditAccount)
    return rows[0][0]


def lock_open_grants(user_id: int) -> list[CreditGrant]:
    """The user's grants with credit left, locked in id order (after the user's row)."""
    return [grant for (grant,) in fetch(
        f"SELECT {columns(CreditGrant, 'g')} FROM {CreditGrant._meta.db_table} g "
        f"WHERE g.user_id = %s AND g.remaining_micros > 0 ORDER BY g.id{for_update()}",
        [user_id], CreditGrant)]


def lock_grant(grant: CreditGrant | int) -> tuple[CreditAccount, CreditGrant]:
    """A grant's account, then the grant, locked. Raises GrantNotActive for an unknown grant."""
    grant_id = grant.pk if isinstance(grant, CreditGrant) else grant
    user_id = CreditGrant.objects.filter(pk=grant_id).values_list("user_id", flat=True).first()
    if user_id is None:
        raise GrantNotActive(f"Unknown grant {grant_id!r}.")
    account = lock_account(user_id)
    rows = fetch(f"SELECT {columns(CreditGrant, 'g')} FROM {CreditGrant._meta.db_table} g "
                 f"WHERE g.id = %s{for_update()}", [grant_id], CreditGrant)
    return account, rows[0][0]


def lock_hold(hold: CreditHold | uuid.UUID | str) -> tuple[CreditAccount, CreditHold]:
    """A hold's account, locked, then the hold, locked too: its journal is written without
    the account's lock (`record_progress`, every few tokens), so a settlement must see the
    latest journal and keep it from moving meanwhile. Raises HoldNotActive for an unknown hold."""
    if isinstance(hold, CreditHold):
        hold_id, user_id = hold.pk, hold.user_id
    else:
        hold_id = hold
        user_id = CreditHold.objects.filter(pk=hold_id).values_list("user_id", flat=True).first()
    if user_id is None:
        raise HoldNotActive(f"Unknown hold {hold_id!r}.")
    account = lock_account(user_id)
    rows = fetch(
        f"SELECT {columns(CreditHold, 'h')} FROM {CreditHold._meta.db_table} h "
        f"WHERE h.id = %s AND h.user_id = %s{for_update()}",
        [CreditHold._meta.pk.get_db_prep_value(hold_id, connection), user_id], CreditHold)
    if not rows:
        raise HoldNotActive(f"Unknown hold {hold_id!r}.")
    return account, rows[0][0]


def lock_held_grants(hold: CreditHold) -> list[CreditGrant]:
    """The grants this hold reserves credit on, locked in id order, each with `reserved_micros`."""
    grants = CreditGrant._meta.db_table
    entries = LedgerEntry._meta.db_table
    rows = fetch(
        f"SELECT {columns(CreditGrant, 'g')}, a.reserved_micros FROM {grants} g JOIN ("
        f"  SELECT grant_id, CAST(SUM(held_change_micros) AS BIGINT) AS reserved_micros FROM {entries}"
        f"  WHERE hold_id = %s AND entry_type = %s GROUP BY grant_id"
        f") a ON a.grant_id = g.id ORDER BY g.id{for_update(of='g')}",
        [CreditHold._meta.pk.get_db_prep_value(hold.pk, connection), EntryType.HOLD],
        CreditGrant,
    )
    held = []
    for grant, reserved in rows:
        if reserved:
            grant.reserved_micros = reserved
            held.append(grant)
    return held


def lock_pending_holds(user_id: int) -> list[CreditHold]:
    """The user's active holds still reserved against a promotion not yet granted, oldest first."""
    return [hold for (hold,) in fetch(
        f"SELECT {columns(CreditHold, 'h')} FROM {CreditHold._meta.db_table} h "
        f"WHERE h.user_id = %s AND h.status = %s AND h.pending_promotion_micros > 0 "
        f"ORDER BY h.created_at, h.id{for_update()}", [user_id, HoldStatus.ACTIVE], CreditHold)]


def advisory_lock(key: int) -> None:
    """A transaction-scoped PostgreSQL advisory lock (released at commit or rollback), for
    rules that span users (caps, velocity); taken after the user's row lock."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
