"""The metered gateway against its upstream: many long streams at once.

Starts, on loopback only:
  - a local async OpenAI-compatible upstream that streams `--tokens` tokens `--delay-ms`
    apart (usage in the last chunk), in its own process;
  - TokenBank with the production web command from the Procfile (and, for comparison in
    the same run, the previous server: gunicorn gthread 2x8 over WSGI), on a throwaway
    PostgreSQL database, metered, with a model routed to that upstream through the
    OpenAI-compatible backend.
For each concurrency level it drives streams for `--seconds`, upstream-direct and the
server in turn, `--rounds` times (this shared box drifts by tens of percent within minutes;
interleaving lets both see the same box), and prints the medians side by side: completed
streams/s, time to first token p50/p99, total p50/p99, the server's CPU seconds per stream
(from /proc), the peak number of its own PostgreSQL connections (pg_stat_activity, by
application_name) and its processes' resident memory. Then the
short non-streaming call: requests/s at 16 clients, and the metered overhead at 1 client
against the same server command with billing off, both servers up and their batches
interleaved. After each level the ledger must reconcile (`credits_verify`) and every stream
must have been charged what its final chunk said. Last, each of issue 13's targets with
this run's figure for the working tree's Procfile server: met, NOT MET, or not measured
(a level or the short calls left out).

A change is measured against what it changes in the same run: `--compare-env 'NAME=VALUE
...'` adds the Procfile server with those environment variables, `--compare-ref GIT_REF` the
Procfile server running that commit's code (a temporary git worktree); every server runs
its measurements in turn within each round, the short calls too.

The load generator is aiohttp (a C HTTP parser) and decodes only the events it needs: it
shares the cores with the server, and with httpx it took a whole core at 64 streams, which
capped upstream-direct at 256 streams well below what the upstream serves.

    .venv/bin/python bench/gateway.py [--levels 16,64,256] [--seconds 8] [--rounds 3]
                                      [--tokens 32] [--delay-ms 20]
                                      [--compare-env 'NAME=VALUE ...'] [--compare-ref REF]

Needs PostgreSQL (DATABASE_URL's server; the database `tokenbank_gateway` is dropped and
recreated).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import free_port, recreate_database, stop_server  # noqa: E402

BIN = ROOT / ".venv" / "bin"
USD = 1_000_000
MODEL = "bench-upstream"
PREVIOUS_WEB = ("gunicorn config.wsgi --bind 127.0.0.1:{port} --worker-class gthread "
                "--workers 2 --threads 8 --timeout 300")


# --- the upstream (run with --serve-upstream in its own process) -----------------------


def upstream_app(tokens: int, delay_s: float):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body or b"{}")
        count = min(tokens, int(request.get("max_tokens") or tokens))
        chat = scope["path"].endswith("/chat/completions")
        # Usage as TokenBank counts it (inference.backends' rule), as a real upstream's
        # tokenizer would agree with itself: the hold's estimate then covers the charge.
        prompt_tokens = _count_prompt_tokens(request, chat)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count,
                 "total_tokens": prompt_tokens + count}

        def choice(text=None, finish=None):
            if chat:
                delta = {"content": text} if text is not None else {}
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "finish_reason": finish}

        if not request.get("stream"):
            await asyncio.sleep(delay_s * count)
            text = " ".join(f"tok{i}" for i in range(count))
            message = ({"role": "assistant", "content": text} if chat else None)
            payload = {"id": "up-1", "object": "chat.completion", "model": request.get("model"),
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    **({"message": message} if chat else {"text": text})}],
                       "usage": usage}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(payload).encode()})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        base = {"id": "up-1", "object": "chat.completion.chunk", "model": request.get("model")}

        async def event(data) -> None:
            await send({"type": "http.response.body", "more_body": True,
                        "body": f"data: {json.dumps(data)}\n\n".encode()})

        for i in range(count):
            await asyncio.sleep(delay_s)
            await event({**base, "choices": [choice(f"tok{i} ")]})
        await event({**base, "choices": [choice(None, "stop")]})
        await event({**base, "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def _count_prompt_tokens(request: dict, chat: bool) -> int:
    """inference.backends' counting rule (a token is `\\w+` or one other non-space character;
    chat prompts as "role: content" lines), without importing Django here."""
    import re

    if chat:
        text = "\n".join(f"{m.get('role')}: {m.get('content') or ''}"
                         for m in request.get("messages") or [])
    else:
        text = request.get("prompt") or ""
    return len(re.findall(r"\w+|[^\w\s]", text))


def serve_upstream(port: int, tokens: int, delay_ms: float) -> None:
    import uvicorn

    uvicorn.run(upstream_app(tokens, delay_ms / 1000), host="127.0.0.1", port=port,
                log_level="warning", backlog=2048, timeout_keep_alive=30)


# --- processes ------------------------------------------------------------------------


def procfile_web(port: int, checkout: Path = ROOT) -> str:
    line = next(line for line in (checkout / "Procfile").read_text().splitlines()
                if line.startswith("web:"))
    return (line.removeprefix("web:").strip().replace("${PORT:-8000}", str(port))
            .replace("0.0.0.0", "127.0.0.1"))


def server_env(args, *, billing: bool, upstream_port: int) -> dict:
    env = {**os.environ, "DATABASE_URL": args.database_url, "DEBUG": "false",
           "SECRET_KEY": "bench-only-secret-key-not-for-production-use-0123456789",
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING",
           "SECURE_SSL_REDIRECT": "false",  # loopback over plain HTTP
           "RATE_LIMIT_REQUESTS_PER_MINUTE": "0", "RATE_LIMIT_TOKENS_PER_MINUTE": "0",
           "UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
           "INFERENCE_BILLING_ENABLED": "true" if billing else "false",
           # The servers' pool, as given to the bench (never the bench process's own).
           "DB_POOL_MAX_SIZE": args.pool_size}
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    else:
        env.pop("REDIS_URL", None)
    return env


def start(command: str, env: dict, probe_url: str, cwd: Path = ROOT) -> subprocess.Popen:
    argv = shlex.split(command)
    argv[0] = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{command!r} exited with {proc.returncode}")
        try:
            httpx.get(probe_url, timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"{command!r} did not start")


def tree_usage(root_pid: int) -> tuple[float, int]:
    """CPU seconds (utime + stime) and resident memory in bytes of a process and all its
    descendants (Linux /proc)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[float, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = (Path("/proc") / entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = ((int(fields[11]) + int(fields[12])) / tick, int(fields[21]) * page)
    cpu, rss, pending = 0.0, 0, [root_pid]
    while pending:
        pid = pending.pop()
        used, resident = stats.get(pid, (0.0, 0))
        cpu, rss = cpu + used, rss + resident
        pending += children.get(pid, [])
    return cpu, rss


class ConnectionWatch:
    """Polls pg_stat_activity for one server's connections to the bench database (by their
    application_name, see `connecting_as`); keeps the peak."""

    def __init__(self, database_url: str, application_name: str):
        self.url, self.name = database_url, urlparse(database_url).path.lstrip("/")
        self.application_name = application_name
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()

    def _poll(self) -> None:
        import psycopg

        admin = urlunparse(urlparse(self.url)._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True) as conn:
            while not self._stop.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = %s", [self.name, self.application_name]).fetchone()
                self.peak = max(self.peak, count)
                time.sleep(0.05)


# --- the load ---------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _client_session(concurrency: int, timeout: float) -> aiohttp.ClientSession:
    # aiohttp, not httpx: its C HTTP parser keeps the load generator, which shares the
    # box's cores with the server, from being what a run measures (httpx's pure-Python
    # parser took a whole core at 64 streams, upstream-direct included).
    connector = aiohttp.TCPConnector(limit=concurrency + 8, limit_per_host=concurrency + 8)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=timeout))


def _has_text(event: bytes) -> bool:
    data = json.loads(event)
    return any((c.get("delta") or {}).get("content") or c.get("text")
               for c in data.get("choices", []))


async def drive_streams(url: str, secrets: list[str], *, concurrency: int, seconds: float,
                        tokens: int) -> dict:
    ttft, totals, told, errors = [], [], {}, {}
    deadline = time.monotonic() + seconds
    async with _client_session(concurrency, 120) as http:

        async def client(worker: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                secret = secrets[worker % len(secrets)]
                body = {"model": MODEL, "stream": True, "max_tokens": tokens,
                        "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": f"stream {worker}-{n}"}]}
                headers = {"Authorization": f"Bearer {secret}"} if secret else {}
                started = time.perf_counter()
                first = None
                try:
                    async with http.post(url, json=body, headers=headers) as response:
                        if response.status != 200:
                            await response.read()
                            errors[response.status] = errors.get(response.status, 0) + 1
                            continue
                        request_id = response.headers.get("X-Request-Id")
                        charged = None
                        async for line in response.content:
                            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                                continue
                            # Each event is decoded until the first token's, then only the
                            # ones that can say what was charged or that the stream failed.
                            if first is None and _has_text(line[6:]):
                                first = time.perf_counter()
                            elif b'"credits"' in line:
                                charged = json.loads(line[6:])["credits"]["charged"]
                            if b'"error"' in line and "error" in json.loads(line[6:]):
                                errors["stream error"] = errors.get("stream error", 0) + 1
                except (TimeoutError, aiohttp.ClientError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                end = time.perf_counter()
                if first is not None:
                    ttft.append((first - started) * 1000)
                totals.append((end - started) * 1000)
                if request_id and charged is not None:
                    told[request_id] = charged

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"completed": len(totals), "per_s": len(totals) / elapsed, "ttft": ttft,
            "totals": totals, "told": told, "errors": errors}


async def drive_calls(url: str, secrets: list[str], *, concurrency: int, total: int) -> dict:
    latencies, errors = [], 0
    counter = iter(range(total))
    async with _client_session(concurrency, 60) as http:

        async def client(worker: int) -> None:
            nonlocal errors
            for n in counter:
                secret = secrets[(n + worker) % len(secrets)]
                started = time.perf_counter()
                async with http.post(url, json={
                        "model": "demo-small", "max_tokens": 16,
                        "messages": [{"role": "user", "content": f"short {n}"}]},
                        headers={"Authorization": f"Bearer {secret}"}) as response:
                    await response.read()
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"rps": total / elapsed, "p50": statistics.median(latencies),
            "mean": statistics.fmean(latencies), "errors": errors}


# --- set-up and reconciliation ---------------------------------------------------------------


def prepare(args, env: dict) -> list[str]:
    recreate_database(args.database_url)
    for command in (["migrate", "--noinput", "-v0"], ["createcachetable"]):
        subprocess.run([str(BIN / "python"), "manage.py", *command], cwd=ROOT, env=env,
                       check=True)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "DEBUG")})
    os.environ["DB_POOL_MAX_SIZE"] = "2"  # this process only reads and checks (not the servers')
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.utils import timezone

    from accounts.models import User
    from accounts.services import create_api_key
    from credits.models import GrantKind
    from credits.services import add_credit
    from inference.models import AiModel, ModelPrice

    model = AiModel.objects.create(id=MODEL, display_name="Bench upstream",
                                   backend="openai_compatible", upstream_model="bench",
                                   context_length=8192, max_output_tokens=4096)
    ModelPrice.objects.create(model=model, input_price_per_million_micros=500_000,
                              output_price_per_million_micros=1_500_000,
                              effective_from=timezone.now() - dt.timedelta(days=1))
    secrets = []
    for index in range(args.users):
        user = User.objects.create_user(f"gw{index}@example.com", "bench-password-123",
                                        first_token_at=timezone.now(), promotion_eligible=False)
        add_credit(user=user, amount_micros=10_000 * USD, kind=GrantKind.PURCHASED)
        secrets.append(create_api_key(user=user, name="bench")[1])
    return secrets


def reconcile(told: dict[str, str]) -> str:
    from credits.money import usd_to_micros
    from credits.services import verify_balances
    from inference.models import UsageRecord
    from inference.reconcile import charges_match_usage_records

    problems = [str(p) for p in verify_balances()] + charges_match_usage_records()
    recorded = dict(UsageRecord.objects.filter(request_id__in=list(told))
                    .values_list("request_id", "cost_micros"))
    wrong = sum(recorded.get(rid) != usd_to_micros(value) for rid, value in told.items())
    if problems or wrong:
        return f"{len(problems)} ledger mismatch(es), {wrong} stream(s) charged other than told"
    return "clean"


# --- the run -------------------------------------------------------------------------------


def _median(values):
    values = [v for v in values if v == v]  # a round with no first token gives NaN
    return statistics.median(values) if values else float("nan")


def _summary(rounds: list[dict], cpu: list[float] | None = None,
             peaks: list[int] | None = None, memory: list[int] | None = None) -> dict:
    """The median over rounds of each figure (a round's p50 and p99 are its own); the
    highest connection peak and resident memory of any round."""
    return {"per_s": _median([r["per_s"] for r in rounds]),
            "ttft50": _median([percentile(r["ttft"], .5) for r in rounds]),
            "ttft99": _median([percentile(r["ttft"], .99) for r in rounds]),
            "total50": _median([percentile(r["totals"], .5) for r in rounds]),
            "total99": _median([percentile(r["totals"], .99) for r in rounds]),
            "cpu": _median(cpu) if cpu else None, "peak": max(peaks) if peaks else None,
            "rss": max(memory) if memory else None,
            "errors": sum(sum(r["errors"].values()) for r in rounds)}


@dataclass
class Server:
    """A server command measured under load: its name, command, environment, the
    `application_name` its database connections carry (so its own are counted) and the
    checkout it runs from (its code: the server's directory comes first on its import path)."""

    name: str
    command: Callable[..., str]
    env: dict
    application_name: str
    checkout: Path = ROOT

    def started(self) -> tuple[subprocess.Popen, str]:
        port = free_port()
        proc = start(self.command(port=port), connecting_as(self.env, self.application_name),
                     f"http://127.0.0.1:{port}/v1/models", cwd=self.checkout)
        return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


@dataclass
class Variant:
    """The Procfile server as measured beside the working tree's: other environment
    variables (--compare-env) or another commit's code (--compare-ref)."""

    extra_env: dict
    checkout: Path = ROOT

    def server(self, name: str, env: dict, application_name: str) -> Server:
        return Server(name, functools.partial(procfile_web, checkout=self.checkout),
                      {**env, **self.extra_env}, application_name, self.checkout)


@contextlib.contextmanager
def checkout_of(ref: str):
    """A temporary git worktree of `ref` (the same virtualenv serves it, and the working
    tree's .env if there is one), removed after."""
    if not ref:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="tokenbank-bench-"))
    try:
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), ref],
                       cwd=ROOT, check=True)
        if (ROOT / ".env").exists():
            (path / ".env").symlink_to(ROOT / ".env")
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                       check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def connecting_as(env: dict, application_name: str) -> dict:
    """`env` whose DATABASE_URL names its connections `application_name` (short and ASCII:
    PostgreSQL keeps 63 bytes of it). Other query parameters stay."""
    url = urlparse(env["DATABASE_URL"])
    query = [(key, value) for key, value in parse_qsl(url.query) if key != "application_name"]
    query.append(("application_name", application_name))
    return {**env, "DATABASE_URL": urlunparse(url._replace(query=urlencode(query)))}


def measure_streams(args, servers: list[Server], secrets, levels, upstream_url) -> list[tuple]:
    """Each level `--rounds` times: each server in turn (the first server changes every
    round), each right after an upstream-direct run, so all see the box in the same state
    (this shared box drifts by tens of percent within minutes; with one direct run per
    round, before all servers, two servers of the same commit differed by 15% at 256
    streams). The upstream-direct row is the median of all its runs."""
    running = []
    rows = []
    try:
        for server in servers:
            running.append((server, *server.started()))
        for _, _, url in running:
            asyncio.run(drive_streams(url, secrets, concurrency=8, seconds=2,
                                      tokens=args.tokens))  # warm up
        for level in levels:
            direct, served, told = [], {s.name: [] for s in servers}, {}
            cpu, peaks, memory = ({s.name: [] for s in servers} for _ in range(3))
            for round_ in range(args.rounds):
                turn = round_ % len(running)
                for server, proc, url in running[turn:] + running[:turn]:
                    direct.append(asyncio.run(drive_streams(
                        upstream_url, [""], concurrency=level, seconds=args.seconds,
                        tokens=args.tokens)))
                    with ConnectionWatch(args.database_url, server.application_name) as watch:
                        cpu_before = tree_usage(proc.pid)[0]
                        result = asyncio.run(drive_streams(
                            url, secrets, concurrency=level, seconds=args.seconds,
                            tokens=args.tokens))
                        cpu_after, rss = tree_usage(proc.pid)
                        used = cpu_after - cpu_before
                    time.sleep(0.5)
                    served[server.name].append(result)
                    cpu[server.name].append(used / max(1, result["completed"]) * 1000)
                    peaks[server.name].append(watch.peak)
                    memory[server.name].append(rss)
                    told.update(result["told"])
            ledger = reconcile(told)
            rows += [(s.name, level, _summary(direct),
                      _summary(served[s.name], cpu[s.name], peaks[s.name], memory[s.name]),
                      ledger)
                     for s in servers]
    finally:
        for _, proc, _ in running:
            stop_server(proc)
    return rows


def measure_short_calls(args, variants: dict[str, Variant], upstream_port, secrets) -> dict:
    """The same server command metered and with billing off, both up, for each variant's
    environment; batches interleaved (16 clients, then 1 client, each server in turn)
    `--rounds` times. A variant's overhead is the median of each round's metered minus
    unmetered p50."""
    servers = {}
    try:
        for index, (name, variant) in enumerate(variants.items()):
            for billing in (True, False):
                env = server_env(args, billing=billing, upstream_port=upstream_port)
                application = f"tokenbank-bench-short-{index}-{'metered' if billing else 'free'}"
                servers[name, billing] = variant.server(name, env, application).started()
        for _, url in servers.values():
            asyncio.run(drive_calls(url, secrets, concurrency=8, total=100))  # warm up
        many = {key: [] for key in servers}
        one = {key: [] for key in servers}
        names = list(variants)

        def in_turns(round_: int) -> list[tuple[str, bool]]:
            # Which variant goes first changes every round, and so does whether a variant's
            # metered or unmetered server goes first: none always follows a metered server's
            # burst of writes (PostgreSQL's background work after it).
            turn = round_ % len(names)
            return [(name, metered) for name in names[turn:] + names[:turn]
                    for metered in ((True, False) if (round_ + names.index(name)) % 2 == 0
                                    else (False, True))]

        for round_ in range(args.rounds):
            for key in in_turns(round_):
                many[key].append(asyncio.run(drive_calls(servers[key][1], secrets,
                                                         concurrency=16, total=args.short_calls)))
            for key in in_turns(round_):  # the 1-client batches back to back
                one[key].append(asyncio.run(drive_calls(
                    servers[key][1], secrets, concurrency=1, total=args.short_calls // 2)))
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    results = {}
    for variant in variants:
        overheads = [metered["p50"] - unmetered["p50"] for metered, unmetered
                     in zip(one[variant, True], one[variant, False], strict=True)]
        results[variant] = {
            "rps": {b: _median([r["rps"] for r in many[variant, b]]) for b in (True, False)},
            "p50": {b: _median([r["p50"] for r in one[variant, b]]) for b in (True, False)},
            "overhead": _median(overheads), "overheads": overheads,
            "errors": sum(r["errors"] for b in (True, False)
                          for r in many[variant, b] + one[variant, b]),
        }
    return results


def parse_env(text: str) -> dict:
    """"A=1 B=" -> {"A": "1", "B": ""}."""
    pairs = {}
    for item in shlex.split(text):
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise SystemExit(f"--compare-env takes NAME=VALUE pairs, not {item!r}")
        pairs[name] = value
    return pairs


def main() -> int:
    default_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tokenbank")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="16,64,256")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved repeats of each measurement; medians are printed")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--short-calls", type=int, default=400,
                        help="calls per batch of the short non-streaming calls; 0 skips them")
    parser.add_argument("--skip-previous", action="store_true",
                        help="do not also measure the previous server (gunicorn gthread 2x8)")
    parser.add_argument("--database-url", default=urlunparse(
        urlparse(default_url)._replace(path="/tokenbank_gateway")))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--compare-env", default="", metavar="'NAME=VALUE ...'",
                        help="also measure the Procfile server with these environment "
                             "variables set, interleaved with the others in the same run")
    parser.add_argument("--compare-ref", default="", metavar="GIT_REF",
                        help="also measure the Procfile server running that commit's code (a "
                             "temporary git worktree; its migrations must match the working "
                             "tree's), interleaved with the others in the same run")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pool_size = os.environ.get("DB_POOL_MAX_SIZE", "8")
    for option in ("rounds", "tokens", "users"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    if args.short_calls < 0 or 0 < args.short_calls < 2:
        parser.error("--short-calls must be 0 (skip them) or at least 2")
    if args.seconds <= 0 or args.delay_ms < 0:
        parser.error("--seconds must be positive and --delay-ms not negative")
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.tokens, args.delay_ms)
        return 0
    if not args.database_url.startswith("postgres"):
        raise SystemExit("bench/gateway.py needs PostgreSQL (DATABASE_URL=postgres://...)")

    variants = {"TokenBank (Procfile)": Variant({})}
    if args.compare_env:  # checked before anything starts
        variants[f"TokenBank ({args.compare_env})"] = Variant(parse_env(args.compare_env))
    if args.compare_ref:
        found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--short",
                                f"{args.compare_ref}^{{commit}}"], cwd=ROOT,
                               capture_output=True, text=True)
        if found.returncode:
            raise SystemExit(f"--compare-ref: no commit {args.compare_ref!r} in this repository")
        compared_name = f"TokenBank at {args.compare_ref} ({found.stdout.strip()})"

    upstream_port = free_port()
    upstream = subprocess.Popen(
        [str(BIN / "python"), __file__, "--serve-upstream", str(upstream_port),
         "--tokens", str(args.tokens), "--delay-ms", str(args.delay_ms)],
        cwd=ROOT, start_new_session=True)
    try:
        env = server_env(args, billing=True, upstream_port=upstream_port)
        secrets = prepare(args, env)
        levels = [int(level) for level in args.levels.split(",") if level]  # "": short calls only
        with checkout_of(args.compare_ref) as other:
            if other is not None:
                variants[compared_name] = Variant({}, other)
            servers = [variant.server(name, env, f"tokenbank-bench-{index}")
                       for index, (name, variant) in enumerate(variants.items())]
            if not args.skip_previous:
                servers.append(Server("TokenBank (previous: gthread 2x8)", PREVIOUS_WEB.format,
                                      env, "tokenbank-bench-previous"))
            time.sleep(1)
            upstream_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            rows = measure_streams(args, servers, secrets, levels, upstream_url)
            short = (measure_short_calls(args, variants, upstream_port, secrets)
                     if args.short_calls else {})
    finally:
        stop_server(upstream)

    print(f"\nStreams of {args.tokens} tokens {args.delay_ms:g} ms apart from a local upstream; "
          f"{args.seconds:g} s per measurement, {args.rounds} interleaved rounds (medians); "
          f"PostgreSQL; {os.cpu_count()} CPUs shared by the clients, the upstream, the "
          f"database and the server(s).")
    print(f"Procfile web: {procfile_web(8000)}; pool per process: "
          f"DB_POOL_MAX_SIZE={args.pool_size}; pg conns: the server's own, at their peak; rss: "
          f"the server's processes together at the end of a measurement, the highest; "
          f"upstream direct: the median of all its runs (one before each server's)")
    width = max(34, *(len(server.name) + 2 for server in servers))
    print(f"{'server':<{width}}{'streams':>8}{'done/s':>9}{'ttft p50':>10}{'ttft p99':>10}"
          f"{'total p50':>11}{'total p99':>11}{'cpu ms':>8}{'pg conns':>9}{'rss MB':>8}"
          f"{'errors':>8}")

    def line(name, level, r):
        print(f"{name:<{width}}{level:>8}{r['per_s']:>9.1f}{r['ttft50']:>10.0f}"
              f"{r['ttft99']:>10.0f}{r['total50']:>11.0f}{r['total99']:>11.0f}"
              f"{'' if r['cpu'] is None else format(r['cpu'], '.1f'):>8}"
              f"{'' if r['peak'] is None else r['peak']:>9}"
              f"{'' if r['rss'] is None else format(r['rss'] / 2**20, '.0f'):>8}{r['errors']:>8}")

    for index, (name, level, direct, served, _) in enumerate(rows):
        if index % len(servers) == 0:
            line("upstream direct", level, direct)
        line(name, level, served)
    print()
    for index, (name, level, direct, served, ledger) in enumerate(rows):
        print(f"{name} at {level}: {100 * served['per_s'] / direct['per_s']:.0f}% of "
              f"upstream-direct streams/s, ttft p50 {served['ttft50'] - direct['ttft50']:+.0f} "
              f"ms")
        if index % len(servers) == len(servers) - 1:
            print(f"ledger after {level} streams (every server's): {ledger}")
    print("\nshort non-streaming calls (demo model):" if short else
          "\nshort non-streaming calls: skipped (--short-calls 0)")
    for name, result in short.items():
        rps, p50 = result["rps"], result["p50"]
        print(f"{name}: {rps[True]:.0f} req/s at 16 clients metered ({rps[False]:.0f} "
              f"unmetered); at 1 client p50 {p50[True]:.2f} ms metered vs {p50[False]:.2f} ms: "
              f"overhead {result['overhead']:+.2f} ms (median of rounds: "
              f"{', '.join(f'{o:+.2f}' for o in result['overheads'])}); "
              f"{result['errors']} errors")
    print("\nIssue 13's targets, for TokenBank (Procfile) in this run:")
    for target, figure, met in target_verdicts(args, rows, short):
        verdict = "not measured" if met is None else "met" if met else "NOT MET"
        print(f"  {target:<64}{figure:<24}{verdict}")
    return 0


# The issue's targets (32-token streams 20 ms apart; its "today" figures).
STREAM_SHARE = 0.80  # of upstream-direct streams/s, at 64 and 256 streams
TTFT_MARGIN_MS = 15  # TTFT p50 over upstream-direct's, at 64 streams
CPU_PER_STREAM_MS = 10  # measured at 64 streams, as the issue's table was
SHORT_CALLS_PER_S = 202  # metered, 16 clients
SHORT_CALL_OVERHEAD_MS = 3  # metered over unmetered p50, 1 client


def target_verdicts(args, rows, short) -> list[tuple[str, str, bool | None]]:
    """(target, this run's figure, met: True, False, or None when this run did not measure
    it) for the working tree's Procfile server."""
    name = "TokenBank (Procfile)"
    served = {level: (direct, result, ledger) for server, level, direct, result, ledger in rows
              if server == name}
    workers = int(re.search(r"--workers (\d+)", procfile_web(8000)).group(1))
    pools_total = workers * int(args.pool_size)
    verdicts = []
    for level in (64, 256):
        target = f">= {STREAM_SHARE:.0%} of upstream-direct streams/s at {level}"
        if level not in served:
            verdicts.append((target, "", None))
            continue
        direct, result, _ = served[level]
        share = result["per_s"] / direct["per_s"]
        verdicts.append((target, f"{share:.0%}", share >= STREAM_SHARE))
    ttft_target = f"TTFT p50 <= upstream-direct + {TTFT_MARGIN_MS} ms at 64"
    cpu_target = f"CPU per stream <= {CPU_PER_STREAM_MS} ms at 64 ({args.tokens} tokens)"
    if 64 in served:
        direct, result, _ = served[64]
        over = result["ttft50"] - direct["ttft50"]
        verdicts.append((ttft_target, f"{over:+.0f} ms", over <= TTFT_MARGIN_MS))
        verdicts.append((cpu_target, f"{result['cpu']:.1f} ms",
                         result["cpu"] <= CPU_PER_STREAM_MS if args.tokens == 32 else None))
    else:
        verdicts += [(ttft_target, "", None), (cpu_target, "", None)]
    peak = max((result["peak"] for _, result, _ in served.values()), default=None)
    verdicts.append((f"peak PostgreSQL connections <= the pools' total ({workers} x "
                     f"{args.pool_size})", "" if peak is None else f"{peak} at most",
                     None if peak is None else peak <= pools_total))
    ledgers = [ledger for _, _, ledger in served.values()]
    verdicts.append(("ledger clean, every stream charged what its final chunk said",
                     "clean at every level" if ledgers and set(ledgers) == {"clean"}
                     else "; ".join(ledgers), set(ledgers) == {"clean"} if ledgers else None))
    calls = short.get(name)
    verdicts.append((f"short calls >= {SHORT_CALLS_PER_S} req/s at 16 clients, metered",
                     f"{calls['rps'][True]:.0f} req/s" if calls else "",
                     calls["rps"][True] >= SHORT_CALLS_PER_S if calls else None))
    verdicts.append((f"metered overhead <= {SHORT_CALL_OVERHEAD_MS} ms at 1 client",
                     f"{calls['overhead']:+.2f} ms" if calls else "",
                     calls["overhead"] <= SHORT_CALL_OVERHEAD_MS if calls else None))
    return verdicts


if __name__ == "__main__":
    sys.exit(main())
