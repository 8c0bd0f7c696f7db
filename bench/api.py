"""Benchmark of the metered inference API: what does billing cost per call?

Starts the app under gunicorn (2 workers, gthread) on a throwaway PostgreSQL database,
with the demo backend at zero delay, and drives POST /v1/chat/completions from
concurrent asyncio httpx clients:

  metered   - the real flow: hold, generate, capture, usage record
  unmetered - the same generation with INFERENCE_BILLING_ENABLED=false (bench-only)

each for many users (one key each, spread load) and for one hot user (every call
locks the same user row), plus a one-client run for the plain per-call overhead.
Prints requests/s and p50/p99 latency, and the metered overhead in ms.

    .venv/bin/python bench/api.py [--requests 600] [--concurrency 8] [--users 50]

Needs PostgreSQL (DATABASE_URL's server; a database `<name>` is dropped and recreated)
and uses Redis for the rate-limit cache when REDIS_URL is set.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
GUNICORN = str(ROOT / ".venv" / "bin" / "gunicorn")


def recreate_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def server_env(args, *, billing: bool) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-secret-key-not-for-production-use-0123456789",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CONN_MAX_AGE": "60",
        "LOG_LEVEL": "WARNING",
        "SECURE_SSL_REDIRECT": "false",  # loopback over plain HTTP
        "DEMO_BACKEND_TOKEN_DELAY_MS": str(getattr(args, "token_delay_ms", 0)),
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "0", "RATE_LIMIT_TOKENS_PER_MINUTE": "0",  # no limits
        "INFERENCE_BILLING_ENABLED": "true" if billing else "false",
    }
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    else:
        env.pop("REDIS_URL", None)
    return env


def prepare(args) -> tuple[list[str], str]:
    """Fresh database, migrations, `args.users` funded users past the promotion, one key each."""
    recreate_database(args.database_url)
    env = server_env(args, billing=True)
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env,
                   check=True)
    subprocess.run([PY, "manage.py", "createcachetable"], cwd=ROOT, env=env, check=True)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "DEBUG")})
    if "REDIS_URL" in env:
        os.environ["REDIS_URL"] = env["REDIS_URL"]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.utils import timezone

    from accounts.models import User
    from accounts.services import create_api_key
    from credits.models import GrantKind
    from credits.services import add_credit

    secrets = []
    for index in range(args.users + 1):
        user = User.objects.create_user(f"bench{index}@example.com", "bench-password-123",
                                        first_token_at=timezone.now(), promotion_eligible=False)
        add_credit(user=user, amount_micros=1_000 * 1_000_000, kind=GrantKind.PURCHASED,
                   description="bench")
        secrets.append(create_api_key(user=user, name="bench")[1])
    return secrets[:-1], secrets[-1]


def start_server(args, *, billing: bool, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [GUNICORN, "config.wsgi", "--workers", "2", "--worker-class", "gthread",
         "--threads", str(args.threads), "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "--keep-alive", "30"],
        cwd=ROOT, env=server_env(args, billing=billing), start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code in (200, 401):
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(proc)
    raise SystemExit("gunicorn did not start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session, and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # gone already
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def drive(port: int, secrets: list[str], *, total: int, concurrency: int) -> dict:
    """`concurrency` clients, each with its own keep-alive connection, share `total` calls."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    latencies: list[float] = []
    failures: dict[int, int] = {}
    counter = iter(range(total))

    async def client(worker: int) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            for n in counter:
                secret = secrets[(n + worker) % len(secrets)]
                body = {"model": "demo-small", "max_tokens": 16,
                        "messages": [{"role": "user", "content": f"Benchmark question {n}"}]}
                started = time.perf_counter()
                response = await http.post(url, json=body,
                                           headers={"Authorization": f"Bearer {secret}"})
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    failures[response.status_code] = failures.get(response.status_code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": total / elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "mean": statistics.fmean(latencies),
        "failures": failures,
    }


def run_all(args, many: list[str], hot: str) -> dict:
    """Both servers up at once (an idle one costs nothing); scenarios interleave metered and
    unmetered runs so that drift in the machine's load hits both alike."""
    ports = {"metered": args.port, "unmetered": args.port + 1}
    procs = [start_server(args, billing=mode == "metered", port=port)
             for mode, port in ports.items()]
    results: dict = {"metered": {}, "unmetered": {}}
    try:
        for port in ports.values():
            asyncio.run(drive(port, many, total=100, concurrency=args.concurrency))  # warm up
        plan = [("many users", many, args.requests, args.concurrency),
                ("one hot user", [hot], args.requests, args.concurrency),
                ("one client", many, args.sequential, 1)]
        for scenario, secrets, total, concurrency in plan:
            for mode, port in ports.items():
                results[mode][scenario] = asyncio.run(
                    drive(port, secrets, total=total, concurrency=concurrency))
    finally:
        for proc in procs:
            stop_server(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url",
                        default="postgres://postgres@127.0.0.1:5432/tb_api_bench")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--port", type=int, default=0,
                        help="metered server's port, unmetered on the next (default: free ones)")
    args = parser.parse_args()
    while not args.port:
        with socket.socket() as probe, socket.socket() as probe2:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            try:
                probe2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            args.port = port

    many, hot = prepare(args)
    results = run_all(args, many, hot)

    print(f"\nPOST /v1/chat/completions, demo-small, max_tokens=16; gunicorn 2 workers x "
          f"{args.threads} threads (gthread), PostgreSQL, cache="
          f"{'Redis' if args.redis_url else 'database'}; {os.cpu_count()} CPUs shared with "
          f"the clients and the database.")
    print(f"{'scenario':<14}{'mode':<11}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}")
    for scenario in ("many users", "one hot user", "one client"):
        for mode in ("metered", "unmetered"):
            r = results[mode][scenario]
            clients = 1 if scenario == "one client" else args.concurrency
            print(f"{scenario:<14}{mode:<11}{clients:>8}{r['rps']:>9.0f}{r['p50']:>9.2f}"
                  f"{r['p99']:>9.2f}{sum(r['failures'].values()):>8}")
    print()
    for scenario in ("many users", "one hot user", "one client"):
        m, u = results["metered"][scenario], results["unmetered"][scenario]
        print(f"{scenario:<14} metered overhead: p50 {m['p50'] - u['p50']:+.2f} ms, "
              f"mean {m['mean'] - u['mean']:+.2f} ms per call; throughput "
              f"{100 * m['rps'] / u['rps']:.0f}% of unmetered")

    from credits.services import verify_balances
    from inference.models import UsageRecord

    problems = verify_balances()
    print(f"\nUsage records written: {UsageRecord.objects.count()}; "
          f"ledger check: {'clean' if not problems else f'{len(problems)} MISMATCHES'}")


if __name__ == "__main__":
    main()
