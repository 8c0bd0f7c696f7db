"""Every lock the ledger takes, one style, in the one order every service follows: the
user's row (only where user rules are decided: the promotion's award, verification), then
the user's credit account, then the grants it touches in id order, so concurrent calls
queue instead of deadlocking. Call inside a transaction. On SQLite write transactions are
serialized (BEGIN IMMEDIATE), so there is nothing to lock.

The locking reads are plain SQL read with config.rows: they run on every debit (see
bench/ledger.py). A hold, a debit and a settlement take the account and its grants (and the
hold) in one statement, which locks its rows in that same order; each checks that the
statement saw every grant it must (see `lock_account_and_open_grants`).
"""

from __future__ import annotations

import uuid
from functools import cache

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


def lock_account_and_open_grants(user: User | int) -> tuple[CreditAccount, list[CreditGrant]]:
    """`lock_account`, then `lock_open_grants`, in one statement where it can be (a debit or
    a hold, on every call: one round trip fewer).

    Rows are locked as the statement returns them: the account, then the grants in id order,
    as the two statements would. But where the statement waited for the account's lock, it
    read the grants as they were when it started: a grant the lock's holder added is missing
    (the rows it changed are read again as they are now). The account's cached totals are
    the sums of its grants', so a missing grant shows, and then the grants are read again,
    under the lock now held."""
    user_id = user_id_of(user)
    rows = fetch(_account_and_open_grants_sql(), [user_id], CreditAccount, CreditGrant)
    if not rows:  # no account yet, or no grant with credit left: nothing was locked
        account = lock_account(user_id)
        return account, lock_open_grants(account.user_id)
    account, grants = rows[0][0], [grant for _, grant in rows]
    if (sum(g.remaining_micros for g in grants), sum(g.held_micros for g in grants)) != (
            account.balance_micros, account.held_micros):
        grants = lock_open_grants(user_id)
    return account, grants


@cache
def _account_and_open_grants_sql() -> str:
    return (f"SELECT {columns(CreditAccount, 'a')}, {columns(CreditGrant, 'g')} "
            f"FROM {CreditAccount._meta.db_table} a JOIN {CreditGrant._meta.db_table} g "
            "ON g.user_id = a.user_id AND g.remaining_micros > 0 "
            f"WHERE a.user_id = %s ORDER BY g.id{for_update(of='a, g')}")


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
    rows = fetch(
        f"SELECT {columns(CreditGrant, 'g')}, r.reserved_micros FROM {CreditGrant._meta.db_table} g "
        f"JOIN ({_reserved_sql()}) r ON r.grant_id = g.id ORDER BY g.id{for_update(of='g')}",
        [CreditHold._meta.pk.get_db_prep_value(hold.pk, connection), EntryType.HOLD],
        CreditGrant,
    )
    return _reserving([(grant, reserved) for grant, reserved in rows])


def lock_settlement(hold: CreditHold | uuid.UUID | str
                    ) -> tuple[CreditAccount, CreditHold, list[CreditGrant] | None]:
    """`lock_hold`, then `lock_held_grants` when the hold is active, in one statement where it
    can be (every call's settlement: two round trips fewer). The grants are None when the
    hold is not active (nothing to settle on them).

    As in `lock_account_and_open_grants`, a statement that waited for the account's lock
    read the hold's entries as they were when it started: a part of the hold moved onto a
    promotion granted meanwhile (`back_pending_holds`) is missing. The hold row itself is
    read as it is now, and its backed part (amount less what is still pending) is the sum
    of its HOLD entries, so a missing part shows, and then the grants are read again, under
    the locks now held."""
    rows = []
    if isinstance(hold, CreditHold):  # its user is known: the one statement can name it
        hold_id = CreditHold._meta.pk.get_db_prep_value(hold.pk, connection)
        rows = fetch(_settlement_sql(), [hold_id, EntryType.HOLD, hold.user_id, hold_id],
                     CreditAccount, CreditHold, CreditGrant)
    if not rows:  # given by id, unknown, or holding nothing yet (all of it pending)
        account, locked = lock_hold(hold)
        return account, locked, (lock_held_grants(locked) if locked.is_active else None)
    account, locked = rows[0][0], rows[0][1]
    if not locked.is_active:
        return account, locked, None
    grants = _reserving([(grant, reserved) for _, _, grant, reserved in rows])
    if sum(g.reserved_micros for g in grants) != (
            locked.amount_micros - locked.pending_promotion_micros):
        grants = lock_held_grants(locked)
    return account, locked, grants


@cache
def _reserved_sql() -> str:
    """Each grant's part of a hold: the sum of the hold's HOLD entries on it."""
    return (f"SELECT grant_id, CAST(SUM(held_change_micros) AS BIGINT) AS reserved_micros "
            f"FROM {LedgerEntry._meta.db_table} WHERE hold_id = %s AND entry_type = %s "
            "GROUP BY grant_id")


@cache
def _settlement_sql() -> str:
    return (f"SELECT {columns(CreditAccount, 'a')}, {columns(CreditHold, 'h')}, "
            f"{columns(CreditGrant, 'g')}, r.reserved_micros "
            f"FROM {CreditAccount._meta.db_table} a "
            f"JOIN {CreditHold._meta.db_table} h ON h.user_id = a.user_id "
            f"JOIN ({_reserved_sql()}) r ON TRUE "
            f"JOIN {CreditGrant._meta.db_table} g ON g.id = r.grant_id "
            f"WHERE a.user_id = %s AND h.id = %s ORDER BY g.id{for_update(of='a, h, g')}")


def _reserving(rows: list[tuple[CreditGrant, int]]) -> list[CreditGrant]:
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
