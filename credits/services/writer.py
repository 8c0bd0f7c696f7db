"""The ledger's one writer: it collects the entries of a service call, keeps each
grant's and the account's cached totals in step with them, and writes them all at once.

Only the ledger services (grants, holds) use it, under the locks of `locks`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db import connection
from django.db.models import Model

from config.rows import cursor as sql_cursor
from config.rows import insert_sql
from credits import money, notices
from credits.models import CreditAccount, CreditGrant, CreditHold, EntryType, LedgerEntry, TakeBack

_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def burn_down_order(grants: Iterable[CreditGrant]) -> list[CreditGrant]:
    """Soonest-expiring first, never-expiring last, ties oldest first."""
    return sorted(grants, key=lambda g: (g.expires_at or _NEVER, g.granted_at, g.pk))


class LedgerWriter:
    """Collects the entries of one service call and keeps the cached totals in step."""

    def __init__(self, account: CreditAccount, *, operation_key: str, now: dt.datetime,
                 actor=None, reference: str = "", internal_reason: str = ""):
        self.account = account
        # Staff only, on every entry of the call (the customer reads `description`).
        self.internal_reason = internal_reason[:255]
        self.operation_key = operation_key
        self.now = now
        self.actor = actor
        self.reference = reference
        self.entries: list[LedgerEntry] = []
        self.touched_grants: dict[int, CreditGrant] = {}
        self.balance_before = account.balance_micros
        self.statements: list[tuple[str, list]] = []  # hold rows written with the entries

    def insert(self, instance: Model) -> None:
        """A new row written with the entries (a hold; a caller's row that must commit with
        them). Its primary key, if the database assigns it, is not read back."""
        self.statements.append(insert_sql(type(instance), [instance]))
        instance._state.adding = False
        instance._state.db = connection.alias

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
              hold: CreditHold | None = None, description: str = "", key_suffix: str = "",
              take_back: TakeBack | None = None) -> None:
        grant.remaining_micros += amount
        grant.held_micros += held_change
        self.account.balance_micros += amount
        self.account.held_micros += held_change
        self.touched_grants[grant.pk] = grant
        seq = len(self.entries)
        key = self.operation_key + (f"#{seq}" if seq else "") + key_suffix
        self.entries.append(
            LedgerEntry(
                user_id=self.account.user_id,
                entry_type=entry_type,
                grant=grant,
                hold=hold,
                take_back=take_back,
                amount_micros=amount,
                held_change_micros=held_change,
                balance_after_micros=self.account.balance_micros,
                description=description[:255],
                internal_reason=self.internal_reason,
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
                           description=expiry_description(grant))

    def flush(self) -> list[LedgerEntry]:
        """Write the hold, grant and account rows and the entries.

        Plain SQL by primary key (Model.save() costs more than the statement on this
        benchmarked path); on PostgreSQL all of it goes in one statement (data-modifying
        CTEs), elsewhere one statement each.
        """
        statements = list(self.statements)
        statements += [
            (f"UPDATE {CreditGrant._meta.db_table} SET remaining_micros = %s, held_micros = %s, "
             "pending_take_back_micros = %s, voided_at = %s WHERE id = %s",
             [g.remaining_micros, g.held_micros, g.pending_take_back_micros,
              connection.ops.adapt_datetimefield_value(g.voided_at), g.pk])
            for g in self.touched_grants.values()
        ]
        statements.append((
            f"UPDATE {CreditAccount._meta.db_table} SET balance_micros = %s, held_micros = %s "
            "WHERE id = %s",
            [self.account.balance_micros, self.account.held_micros, self.account.pk],
        ))
        entries_sql, entries_params = (
            insert_sql(LedgerEntry, self.entries, returning="id") if self.entries else ("", [])
        )
        with sql_cursor() as cursor:
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
        if any(e.entry_type in notices.SPENDING_ENTRY_TYPES for e in self.entries):
            # No query: at most an enqueue after commit when a threshold is crossed.
            event = notices.notice_for_spend(before_micros=self.balance_before,
                                                    after_micros=self.account.balance_micros)
            if event is not None:
                notices.enqueue_notice(user_id=self.account.user_id, event=event)
        return self.entries


def expiry_description(grant: CreditGrant) -> str:
    return (f"Expired ${money.format_usd(grant.free_micros)} of "
            f"{grant.get_kind_display().lower()} credit #{grant.pk}")


def usable_grants(grants: Iterable[CreditGrant], now: dt.datetime) -> list[CreditGrant]:
    # Spendable: credit awaiting an email verification is not drawn by new debits or holds.
    return [g for g in burn_down_order(grants) if g.is_spendable_at(now) and g.free_micros > 0]

