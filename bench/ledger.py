#!/usr/bin/env python
"""Ledger debit throughput: credits.services.use_credits vs the minimal raw SQL debit.

Run:  DATABASE_URL=postgres://postgres@127.0.0.1:5432/tokenbank_bench .venv/bin/python bench/ledger.py

Workers are processes (like gunicorn workers), each with its own connection.
Prints debits/s and p50/p99 latency for 1,000 accounts and for one hot account,
at 1 and 8 workers, and the service/raw throughput ratio. Then runs
credits_verify: nothing may be lost.
"""

import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tokenbank_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Forked workers cannot share the parent's connection pool (its threads do not survive a
# fork); each worker keeps one plain connection, as the benchmark has always measured.
os.environ.setdefault("DB_POOL_MAX_SIZE", "0")

import django  # noqa: E402

DEBITS_PER_RUN = int(os.environ.get("BENCH_DEBITS", "2000"))
DEBIT_MICROS = 1_000
ACCOUNTS = 1_000


def ensure_database() -> None:
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    assert db["ENGINE"].endswith("postgresql"), "the ledger benchmark runs on PostgreSQL"
    with psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432,
                         user=db["USER"], dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')


def setup_accounts() -> list[int]:
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import User
    from credits import services
    from credits.models import GrantKind

    call_command("migrate", verbosity=0)
    with connection.cursor() as cur:
        cur.execute("""
            DROP TABLE IF EXISTS bench_raw_entry; DROP TABLE IF EXISTS bench_raw_account;
            CREATE TABLE bench_raw_account (
                id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
            CREATE TABLE bench_raw_entry (id bigserial PRIMARY KEY, account_id bigint NOT NULL,
                amount bigint NOT NULL, balance_after bigint NOT NULL, created_at timestamptz NOT NULL);
        """)
    existing = list(
        User.objects.filter(email__startswith="bench-").order_by("pk").values_list("pk", flat=True))
    for i in range(len(existing), ACCOUNTS):
        user = User.objects.create_user(f"bench-{i}@example.com", None)
        services.add_credit(user=user, amount_micros=10**12, kind=GrantKind.PURCHASED)
        existing.append(user.pk)
    with connection.cursor() as cur:
        cur.executemany("INSERT INTO bench_raw_account (id, balance) VALUES (%s, %s)",
                        [(pk, 10**12) for pk in existing])
    return existing


def worker(args) -> list[float]:
    mode, account_ids, count, seed = args
    django.setup()
    from django.db import connection, transaction

    from credits import services

    rng = random.Random(seed)
    latencies = []
    connection.ensure_connection()
    for _ in range(count):
        account = rng.choice(account_ids)
        start = time.perf_counter()
        if mode == "service":
            services.use_credits(user=account, amount_micros=DEBIT_MICROS, reference="bench")
        else:
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(
                    "UPDATE bench_raw_account SET balance = balance - %s "
                    "WHERE id = %s AND balance >= %s RETURNING balance",
                    [DEBIT_MICROS, account, DEBIT_MICROS])
                balance = cur.fetchone()[0]
                cur.execute(
                    "INSERT INTO bench_raw_entry (account_id, amount, balance_after, created_at) "
                    "VALUES (%s, %s, %s, now())", [account, -DEBIT_MICROS, balance])
        latencies.append(time.perf_counter() - start)
    connection.close()
    return latencies


def run(mode: str, account_ids: list[int], workers: int) -> dict:
    per_worker = DEBITS_PER_RUN // workers
    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        start = time.perf_counter()
        results = pool.map(worker, [(mode, account_ids, per_worker, seed) for seed in range(workers)])
        wall = time.perf_counter() - start
    latencies = sorted(x for r in results for x in r)
    return {
        "rate": len(latencies) / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main() -> None:
    django.setup()
    ensure_database()
    from django.core.management import call_command
    from django.db import connections

    account_ids = setup_accounts()
    connections.close_all()
    print(f"{DEBITS_PER_RUN} debits per run, {DEBIT_MICROS} micro-dollars each, PostgreSQL\n")
    header = (f"{'workload':<16}{'workers':>8}{'path':>9}{'debits/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'service/raw':>13}")
    print(header)
    print("-" * len(header))
    for label, ids in (("1,000 accounts", account_ids), ("one hot account", account_ids[:1])):
        for workers in (1, 8):
            raw = run("raw", ids, workers)
            service = run("service", ids, workers)
            for path, r in (("raw", raw), ("service", service)):
                ratio = f"{service['rate'] / raw['rate']:.2f}" if path == "service" else ""
                print(f"{label:<16}{workers:>8}{path:>9}{r['rate']:>11.0f}{r['p50']:>9.2f}"
                      f"{r['p99']:>9.2f}{ratio:>13}")
    print()
    call_command("credits_verify")


if __name__ == "__main__":
    main()
