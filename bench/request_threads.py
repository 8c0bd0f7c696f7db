#!/usr/bin/env python
"""What a request's own thread costs: Django's ASGI handler (a thread started, and another
to join it, per request) against config.request_threads (the request's thread reused).

    .venv/bin/python bench/request_threads.py [--requests 2000] [--rounds 5]

Both handlers serve the same requests in one process, in memory (no sockets), batches
interleaved round by round: GET /healthz (answered by the first middleware: the handler's
own cost) and GET /v1/models without a key (DRF's 401, rendered on the request's thread).
Prints the median over rounds of CPU and wall time per request, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "ERROR")

PATHS = {"/healthz": 200, "/v1/models": 401}


def scope_for(path: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": [(b"host", b"localhost")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def serve(handler, path: str, requests: int) -> tuple[float, float]:
    """CPU and wall seconds per request for `requests` requests of `path`, one at a time."""
    scope = scope_for(path)

    async def receive():
        # The body, then nothing: Django listens for a disconnect until the response is out.
        if sent_body:
            await asyncio.Event().wait()
        sent_body.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses, sent_body = [], []

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        sent_body.clear()
        await handler(dict(scope), receive, send)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if set(statuses) != {PATHS[path]}:
        raise SystemExit(f"{path}: unexpected statuses {sorted(set(statuses))}")
    return cpu / requests, wall / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")

    import django
    from django.core.handlers.asgi import ASGIHandler

    django.setup(set_prefix=False)
    import logging

    logging.getLogger("django.request").setLevel(logging.ERROR)  # the expected 401s
    from config.request_threads import RequestThreadsHandler

    handlers = {"Django (thread per request)": ASGIHandler(),
                "reused request threads": RequestThreadsHandler()}

    async def run() -> dict:
        results = {(name, path): [] for name in handlers for path in PATHS}
        for name in handlers:  # warm-up: imports, caches, the first threads
            for path in PATHS:
                await serve(handlers[name], path, 50)
        for round_index in range(args.rounds):
            order = list(handlers)[round_index % 2:] + list(handlers)[:round_index % 2]
            for path in PATHS:
                for name in order:
                    results[name, path].append(await serve(handlers[name], path,
                                                           args.requests))
        return results

    results = asyncio.run(run())
    print(f"{args.requests} requests per batch, {args.rounds} interleaved rounds (medians), "
          f"one at a time, in memory; {os.cpu_count()} CPUs")
    print(f"{'path':<12}{'handler':<30}{'CPU µs/req':>12}{'wall µs/req':>13}{'CPU ratio':>11}")
    for path in PATHS:
        baseline = None
        for name in handlers:
            cpu = statistics.median(c for c, _ in results[name, path]) * 1e6
            wall = statistics.median(w for _, w in results[name, path]) * 1e6
            baseline = baseline or cpu
            print(f"{path:<12}{name:<30}{cpu:>12.0f}{wall:>13.0f}{cpu / baseline:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
