"""Reconciliation: the cached totals against the ledger (`manage.py credits_verify`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, Sum

from credits.models import CreditAccount, CreditGrant, CreditHold, HoldStatus, LedgerEntry, TakeBack


@dataclass(frozen=True)
class Mismatch:
    user_id: int
    what: str
    expected: int
    found: int

    def __str__(self) -> str:
        return f"user {self.user_id}: {self.what}: expected {self.expected}, found {self.found}"


def verify_balances(*, user_ids: Iterable[int] | None = None) -> list[Mismatch]:
    """Check the accounts' cached totals against the ledger, for every user (or some).

    balance == sum of entries == sum of grants' remaining; held == sum of held
    changes == sum of grants' held == sum of active holds' reserved part; and
    each grant's remaining/held == its own entries; each grant's owed take-back == its open
    take-backs' pending part; each take-back's taken part == its REFUND entries.
    """
    accounts = CreditAccount.objects.all()
    grants = CreditGrant.objects.all()
    entries = LedgerEntry.objects.all()
    holds = CreditHold.objects.filter(status=HoldStatus.ACTIVE)
    take_backs = TakeBack.objects.all()
    if user_ids is not None:
        ids = list(user_ids)
        accounts, grants = accounts.filter(user_id__in=ids), grants.filter(user_id__in=ids)
        entries, holds = entries.filter(user_id__in=ids), holds.filter(user_id__in=ids)
        take_backs = take_backs.filter(user_id__in=ids)

    def per_user(qs, **sums) -> dict[int, dict[str, int]]:
        rows = qs.order_by().values("user_id").annotate(**{k: Sum(v) for k, v in sums.items()})
        return {r["user_id"]: r for r in rows}

    entry_sums = per_user(entries, balance="amount_micros", held="held_change_micros")
    grant_sums = per_user(grants, balance="remaining_micros", held="held_micros")
    hold_sums = per_user(holds, amount="amount_micros", pending="pending_promotion_micros")

    problems: list[Mismatch] = []
    cached = {user_id: (balance, held) for user_id, balance, held in
              accounts.values_list("user_id", "balance_micros", "held_micros")}
    # A user with ledger rows but no account is a mismatch too (found 0).
    for user_id in sorted(set(cached) | set(entry_sums) | set(grant_sums) | set(hold_sums)):
        balance, held = cached.get(user_id, (0, 0))
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
    owed = {
        r["grant_id"]: r["pending"]
        for r in take_backs.order_by().values("grant_id").annotate(pending=Sum("pending_micros"))
    }
    for grant_id, user_id, remaining, held, pending in grants.values_list(
        "pk", "user_id", "remaining_micros", "held_micros", "pending_take_back_micros"
    ):
        if (owed.get(grant_id) or 0) != pending:
            problems.append(Mismatch(user_id, f"grant #{grant_id} owed take-back vs its take-backs",
                                     owed.get(grant_id) or 0, pending))
        row = by_grant.get(grant_id, {})
        if (row.get("balance") or 0) != remaining:
            problems.append(Mismatch(user_id, f"grant #{grant_id} remaining vs its entries",
                                     row.get("balance") or 0, remaining))
        if (row.get("held") or 0) != held:
            problems.append(Mismatch(user_id, f"grant #{grant_id} held vs its entries",
                                     row.get("held") or 0, held))
    refunded = {
        r["take_back_id"]: -r["amount"]
        for r in entries.filter(take_back__isnull=False).order_by().values("take_back_id")
        .annotate(amount=Sum("amount_micros"))
    }
    problems += [
        Mismatch(user_id, f"take-back #{pk} taken vs its entries", refunded.get(pk, 0), taken)
        for pk, user_id, taken in take_backs.values_list("pk", "user_id", "taken_micros")
        if refunded.get(pk, 0) != taken
    ]
    problems += [
        Mismatch(e.user_id, f"entry #{e.pk} has no grant", 0, e.amount_micros)
        for e in entries.filter(grant__isnull=True)
    ]
    # Paid calls extend these grants only on accounts marked as holding one.
    marked = set(accounts.filter(has_extending_grants=True).values_list("user_id", flat=True))
    extending = (grants.extending().order_by().values("user_id")
                 .annotate(count=Count("pk")).values_list("user_id", "count"))
    problems += [
        Mismatch(user_id, "extending grants vs the account's mark", count, 0)
        for user_id, count in sorted(extending) if user_id not in marked
    ]
    return problems

