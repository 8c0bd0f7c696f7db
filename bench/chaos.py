"""Chaos on one account: does any path lose, create or double-count a micro-dollar?

Bounded and loopback only. Starts the app as the Procfile does (gunicorn) on a throwaway
PostgreSQL database, with the demo backend streaming tokens a few ms apart, then for
`--seconds`:

  clients   many threads stream /v1/chat/completions on ONE account; some hang up
            mid-stream (after a random number of chunks), the rest read to the end
  chaos     meanwhile, in this process: the stale-hold sweep and the expiry sweep, refunds
            (take-backs) of the purchased credit, staff grants, password resets with a
            stale user object (full saves), and short-lived credit expiring under the calls

Then it prints the reconciliation: cached totals = entries = grants (`verify_balances`),
every charge = its usage record (inference.reconcile), and every completed stream was
charged what its final chunk told the client. Exit status 1 on any mismatch.

    .venv/bin/python bench/chaos.py [--clients 16] [--seconds 30]

Needs PostgreSQL (DATABASE_URL's server; the database `tokenbank_chaos` is dropped and
recreated). Uses Redis for the rate-limit cache when REDIS_URL is set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import (  # noqa: E402
    free_port,
    recreate_database,
    server_env,
    start_server,
    stop_server,
)

USD = 1_000_000


def setup_django(args) -> None:
    import subprocess

    recreate_database(args.database_url)
    env = server_env(args, billing=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT,
                   env=env, check=True)
    subprocess.run([sys.executable, "manage.py", "createcachetable"], cwd=ROOT, env=env,
                   check=True)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "DEBUG")})
    if "REDIS_URL" in env:
        os.environ["REDIS_URL"] = env["REDIS_URL"]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)


class Outcomes:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.told: dict[str, int] = {}  # request id -> micro-dollars the final chunk said

    def add(self, kind: str, request_id: str | None = None, told: int | None = None) -> None:
        with self.lock:
            self.counts[kind] += 1
            if request_id and told is not None:
                self.told[request_id] = told


def stream_calls(base_url: str, secret: str, deadline: float, outcomes: Outcomes,
                 seed: int) -> None:
    rng = random.Random(seed)
    from credits.money import usd_to_micros

    with httpx.Client(base_url=base_url, timeout=60) as client:
        while time.monotonic() < deadline:
            hang_up_after = rng.randint(1, 12) if rng.random() < 0.3 else None
            body = {"model": "demo-small", "stream": True, "max_tokens": rng.randint(4, 32),
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": f"chaos {rng.random()}"}]}
            try:
                with client.stream("POST", "/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {secret}"}) as response:
                    if response.status_code != 200:
                        response.read()
                        outcomes.add(f"http {response.status_code}")
                        continue
                    request_id = response.headers.get("X-Request-Id")
                    chunks, told = 0, None
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunks += 1
                        data = json.loads(line[6:])
                        if "credits" in data:
                            told = usd_to_micros(data["credits"]["charged"])
                        if hang_up_after is not None and chunks >= hang_up_after:
                            break
                    if hang_up_after is not None and told is None:
                        outcomes.add("hung up mid-stream", request_id)
                    else:
                        outcomes.add("completed", request_id, told)
            except httpx.HTTPError as exc:
                outcomes.add(f"client error {type(exc).__name__}")


def chaos(customer_id: int, purchased_id: int, staff_id: int, deadline: float,
          outcomes: Outcomes, seed: int) -> None:
    from django.contrib.auth.forms import SetPasswordForm
    from django.db import connection
    from django.utils import timezone

    from accounts.models import User
    from credits import services, staff_actions
    from credits.models import GrantKind

    rng = random.Random(seed)
    staff = User.objects.get(pk=staff_id)
    try:
        while time.monotonic() < deadline:
            action = rng.choice(["sweep", "expire", "refund", "staff grant", "password reset",
                                 "short credit"])
            try:
                if action == "sweep":
                    services.release_stale_holds()
                elif action == "expire":
                    services.expire_credits()
                elif action == "refund":
                    services.take_back_credit(grant=purchased_id, amount_micros=rng.randint(1, 20_000),
                                              reason="chaos refund",
                                              idempotency_key=f"chaos-{rng.random()}")
                elif action == "staff grant":
                    customer = User.objects.get(pk=customer_id)
                    staff_actions.grant_credit(staff=staff, user=customer, amount_micros=USD // 4,
                                               reason="chaos goodwill")
                elif action == "password reset":
                    stale = User.objects.get(pk=customer_id)
                    time.sleep(0.05)  # calls are billed meanwhile: the copy goes stale
                    form = SetPasswordForm(stale, {"new_password1": "chaos-passphrase-91",
                                                   "new_password2": "chaos-passphrase-91"})
                    form.is_valid() and form.save()
                else:
                    services.add_credit(user=customer_id, amount_micros=USD // 10,
                                        kind=GrantKind.ADJUSTMENT, description="chaos, short",
                                        expires_at=timezone.now() + dt.timedelta(seconds=2))
                outcomes.add(f"chaos: {action}")
            except Exception as exc:  # refused actions are fine; they are counted
                outcomes.add(f"chaos: {action} refused ({type(exc).__name__})")
            time.sleep(rng.uniform(0.02, 0.2))
    finally:
        connection.close()


def main() -> int:
    default_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tokenbank")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=16, help="gunicorn threads per worker")
    parser.add_argument("--token-delay-ms", type=float, default=5,
                        help="the demo backend's delay between tokens")
    parser.add_argument("--database-url", default=urlunparse(
        urlparse(default_url)._replace(path="/tokenbank_chaos")))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    args = parser.parse_args()
    if not args.database_url.startswith("postgres"):
        raise SystemExit("bench/chaos.py needs PostgreSQL (DATABASE_URL=postgres://...)")

    setup_django(args)
    from django.utils import timezone

    from accounts.models import User
    from accounts.services import create_api_key
    from credits.models import GrantKind
    from credits.services import add_credit, verify_balances
    from inference.models import UsageRecord
    from inference.reconcile import charges_match_usage_records

    customer = User.objects.create_user("chaos@example.com", "chaos-passphrase-90",
                                        first_token_at=timezone.now(), promotion_eligible=False)
    purchased = add_credit(user=customer, amount_micros=40 * USD, kind=GrantKind.PURCHASED,
                           description="chaos purchase")
    staff = User.objects.create_superuser("chaos-staff@tokenbank.test", "chaos-passphrase-92")
    _key, secret = create_api_key(user=customer, name="chaos")

    port = free_port()
    server = start_server(args, billing=True, port=port)
    outcomes = Outcomes()
    started = time.monotonic()
    deadline = started + args.seconds
    try:
        workers = [threading.Thread(target=stream_calls,
                                    args=(f"http://127.0.0.1:{port}", secret, deadline, outcomes, i))
                   for i in range(args.clients)]
        workers.append(threading.Thread(target=chaos, args=(customer.pk, purchased.pk, staff.pk,
                                                            deadline, outcomes, 99)))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        time.sleep(1)  # the last hang-ups settle in the server
    finally:
        stop_server(server)

    balance_problems = [str(p) for p in verify_balances()]
    call_problems = charges_match_usage_records()
    recorded = dict(UsageRecord.objects.filter(request_id__in=list(outcomes.told))
                    .values_list("request_id", "cost_micros"))
    told_problems = [f"call {rid}: told {told} micros, usage record {recorded.get(rid)}"
                     for rid, told in outcomes.told.items() if recorded.get(rid) != told]

    customer.refresh_from_db()
    print(f"\nchaos on one account: {args.clients} streaming clients + sweeps, expiry, refunds, "
          f"staff grants, password resets for {time.monotonic() - started:.0f}s")
    print(f"{'what':<44}{'count':>8}")
    for kind, count in sorted(outcomes.counts.items()):
        print(f"{kind:<44}{count:>8}")
    print(f"{'usage records':<44}{UsageRecord.objects.count():>8}")
    print(f"{'final balance (micro-dollars)':<44}{customer.credit_balance:>8}")
    print("\nreconciliation")
    for name, problems in [("cached = entries = grants", balance_problems),
                           ("every charge = its usage record", call_problems),
                           ("every completed stream = what it was told", told_problems)]:
        print(f"  {name:<44}{'ok' if not problems else f'{len(problems)} MISMATCH(ES)'}")
        for problem in problems[:10]:
            print(f"    {problem}")
    return 1 if balance_problems or call_problems or told_problems else 0


if __name__ == "__main__":
    sys.exit(main())
