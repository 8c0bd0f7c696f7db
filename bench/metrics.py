#!/usr/bin/env python
"""How fast is the promotion metrics page on 100,000 users?

Run:  DATABASE_URL=postgres://postgres@127.0.0.1:5432/tokenbank_bench_metrics \
      .venv/bin/python bench/metrics.py [--users 100000] [--runs 5] [--rebuild]
(--rebuild drops and recreates that database.)

Builds (once; --rebuild to redo) a synthetic cohort in its own PostgreSQL database:
users over 90 days split between two promotion variants, ~60 % generating a first
token, promotional grants used, expired or still open, purchases and paid calls
after the promotion ran out. The rows are bulk-inserted straight into the tables
for speed (this database is throw-away; the product writes them only through
credits.services), and kept consistent: `credits_verify` passes on it.

Then prints the median (and min/max) of a few runs of the metrics selector over the
whole 90 days, the number of SQL queries, and the full admin page render; then the same
for what each promotion earns back (credits.promotion.earnback), its page and its CSV.
"""

import argparse
import datetime as dt
import math
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tokenbank_bench_metrics")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "false")  # no query log growing during the build

import django  # noqa: E402

USD = 1_000_000
DAYS = 90
START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
BATCH = 5_000


def ensure_database(*, fresh: bool) -> None:
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    assert db["ENGINE"].endswith("postgresql"), "the metrics benchmark runs on PostgreSQL"
    with psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                         user=db["USER"], dbname="postgres", autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}"')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            [db["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')


def build(n_users: int) -> None:
    from django.db import transaction

    from accounts.models import User
    from credits.models import (
        CreditAccount,
        CreditGrant,
        EntryType,
        GrantKind,
        LedgerEntry,
        Promotion,
        PromotionAssignment,
        PromotionVariant,
    )
    from credits.promotion.terms import pick_variant

    rng = random.Random(20260601)
    promotion, _ = Promotion.objects.get_or_create(
        name="Bench A/B", defaults={"active_from": START - dt.timedelta(days=1),
                                    "amount_micros": 20 * USD, "window_seconds": 180,
                                    "expiry_days": 30})
    a, _ = PromotionVariant.objects.get_or_create(promotion=promotion, name="A $20/180s",
                                                  defaults={"weight": 1})
    b, _ = PromotionVariant.objects.get_or_create(
        promotion=promotion, name="B $10/120s",
        defaults={"weight": 1, "amount_micros": 10 * USD, "window_seconds": 120})
    terms = {a.pk: (20 * USD, 180), b.pk: (10 * USD, 120)}

    t0 = time.perf_counter()
    for offset in range(0, n_users, BATCH):
        size = min(BATCH, n_users - offset)
        users = []
        for i in range(offset, offset + size):
            joined = START + dt.timedelta(seconds=rng.uniform(0, DAYS * 86400))
            first = None
            if rng.random() < 0.6:
                first = joined + dt.timedelta(seconds=rng.lognormvariate(math.log(90), 1.0))
            users.append(User(email=f"bench-{i}@example.com", password="!", date_joined=joined,
                              first_token_at=first))
        with transaction.atomic():
            users = User.objects.bulk_create(users)  # no post_save: assign below
            assignments, grants, plans = [], [], []
            for user in users:
                variant = pick_variant(promotion=promotion, user_id=user.pk)
                assignments.append(PromotionAssignment(user=user, promotion=promotion,
                                                       variant=variant, assigned_at=user.date_joined))
                amount, window = terms[variant.pk]
                if user.first_token_at is None or (
                        user.first_token_at - user.date_joined).total_seconds() > window:
                    user.promotion_eligible = user.first_token_at is None
                    continue
                user.promotion_claimed = True
                fate = rng.random()  # <0.4 spent, <0.7 part spent then expired, else open
                spent = amount if fate < 0.4 else amount * rng.randint(1, 9) // 10
                expired = amount - spent if 0.4 <= fate < 0.7 else 0
                bought = (spent + expired == amount) and rng.random() < 0.35
                granted = user.first_token_at
                grants.append(CreditGrant(
                    user=user, kind=GrantKind.PROMOTIONAL, amount_micros=amount,
                    remaining_micros=amount - spent - expired, granted_at=granted,
                    expires_at=granted + dt.timedelta(days=30), description="First-token promotion",
                    idempotency_key="promotion:first-token", source_reference="first-token",
                    promotion_variant=variant))
                plans.append((user, amount, spent, expired, bought))
            PromotionAssignment.objects.bulk_create(assignments)
            grants = CreditGrant.objects.bulk_create(grants)
            purchases, entries = [], []
            for grant, (user, amount, spent, expired, bought) in zip(grants, plans, strict=True):
                at = grant.granted_at
                balance = amount
                entries.append(_entry(user, EntryType.GRANT, grant, amount, balance, at, "g"))
                if spent:
                    at += dt.timedelta(days=rng.uniform(0.1, 10))
                    balance -= spent
                    entries.append(_entry(user, EntryType.USAGE, grant, -spent, balance, at, "u"))
                if expired:
                    at = grant.expires_at
                    balance -= expired
                    entries.append(_entry(user, EntryType.EXPIRY, grant, -expired, balance, at,
                                          "x"))
                if bought:
                    purchases.append((user, at + dt.timedelta(days=rng.uniform(0.1, 5)), balance))
            purchased = CreditGrant.objects.bulk_create([
                CreditGrant(user=user, kind=GrantKind.PURCHASED, amount_micros=10 * USD,
                            remaining_micros=7 * USD, granted_at=at, description="Purchase",
                            idempotency_key="bench-purchase")
                for user, at, _ in purchases])
            for grant, (user, at, balance) in zip(purchased, purchases, strict=True):
                entries.append(_entry(user, EntryType.GRANT, grant, 10 * USD, balance + 10 * USD,
                                      at, "p"))
                entries.append(_entry(user, EntryType.USAGE, grant, -3 * USD, balance + 7 * USD,
                                      at + dt.timedelta(hours=1), "pu"))
            LedgerEntry.objects.bulk_create(entries, batch_size=BATCH)
            totals: dict[int, int] = defaultdict(int)
            for entry in entries:
                totals[entry.user_id] += entry.amount_micros
            User.objects.bulk_update(users, ["promotion_eligible", "promotion_claimed"],
                                     batch_size=BATCH)
            CreditAccount.objects.filter(user__in=users).delete()  # opened empty at creation
            CreditAccount.objects.bulk_create(
                [CreditAccount(user_id=user.pk, balance_micros=totals[user.pk]) for user in users],
                batch_size=BATCH)
        print(f"  {offset + size:>7} users ({time.perf_counter() - t0:.0f}s)", flush=True)
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("ANALYZE")


def _entry(user, entry_type, grant, amount, balance_after, at, tag):
    from credits.models import LedgerEntry

    key = f"bench:{grant.pk}:{tag}"
    return LedgerEntry(user_id=user.pk, entry_type=entry_type, grant=grant, amount_micros=amount,
                       balance_after_micros=balance_after, description=tag, operation_key=key,
                       idempotency_key=key, created_at=at)


def timed(label: str, fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    median = statistics.median(samples)
    print(f"{label}: median {median * 1000:.0f} ms (min {min(samples) * 1000:.0f}, "
          f"max {max(samples) * 1000:.0f}) over {runs} runs")
    return median


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()

    django.setup()
    ensure_database(fresh=args.rebuild)
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from accounts.models import User
    from credits.promotion.metrics import promotion_metrics
    from credits.services import verify_balances

    call_command("migrate", verbosity=0)
    have = User.objects.filter(email__startswith="bench-").count()
    if have not in (0, args.users):
        raise SystemExit(f"The bench database has {have} users, not {args.users}: use --rebuild.")
    if have == 0:
        print(f"Building {args.users} users...")
        build(args.users)
        problems = verify_balances()
        print(f"Books verified: {len(problems)} mismatches")
    start, end = START.date(), (START + dt.timedelta(days=DAYS)).date()

    rows = promotion_metrics(start=start, end=end)
    for row in rows:
        print(f"  {row.label}: {row.signups} sign-ups, "
              f"{(row.first_token_share or 0) * 100:.1f}% first token in window, "
              f"median {row.median_seconds_to_first_token or 0:.0f}s, "
              f"utilization {(row.utilization or 0) * 100:.0f}%, "
              f"retention {(row.retention or 0) * 100:.0f}%")
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as queries:
        promotion_metrics(start=start, end=end)
    print(f"SQL queries per computation: {len(queries)}")
    timed(f"promotion_metrics over {args.users} users", lambda: promotion_metrics(
        start=start, end=end), args.runs)

    admin, _ = User.objects.get_or_create(email="metrics-admin@tokenbank.local",
                                          defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(admin)
    url = reverse("admin:credits_promotion_metrics")
    query = {"start": start.isoformat(), "end": end.isoformat()}

    def page():
        response = client.get(url, query, secure=True)
        assert response.status_code == 200

    timed("metrics admin page (HTML)", page, args.runs)
    timed("metrics CSV export", lambda: client.get(url, {**query, "format": "csv"}, secure=True), args.runs)

    # What each promotion earns back (credits.promotion.earnback), over the same cohort.
    from credits.promotion.earnback import earnback_metrics

    for row in earnback_metrics(start=start, end=end):
        print(f"  {row.label}: {row.signups} sign-ups, used {row.used_micros / USD:,.0f} USD, "
              f"{(row.conversion_30d or 0) * 100:.1f}% paying within 30 d, revenue "
              f"{row.revenue_30d_micros / USD:,.0f} USD, payback {row.payback or 0:.2f}")
    with CaptureQueriesContext(connection) as queries:
        earnback_metrics(start=start, end=end)
    print(f"SQL queries per earn-back computation: {len(queries)}")
    timed(f"earnback_metrics over {args.users} users",
          lambda: earnback_metrics(start=start, end=end), args.runs)
    earnback_url = reverse("admin:credits_promotion_earnback")
    timed("earn-back admin page (HTML)", lambda: client.get(earnback_url, query, secure=True), args.runs)
    timed("earn-back CSV export", lambda: client.get(earnback_url, {**query, "format": "csv"},
                                                 secure=True),
          args.runs)


if __name__ == "__main__":
    main()
