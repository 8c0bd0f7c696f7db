"""The Prometheus metrics (prometheus_client) and the one-line calls that feed them.

Multiprocess: with PROMETHEUS_MULTIPROC_DIR set (before this module is imported; settings
reads .env into the environment first), every process writes its samples to files there
and /metrics sums the files, so the gunicorn/uvicorn workers, and a Celery worker on the
same host, add up. config/gunicorn.py empties the directory at start and marks a worker
dead when it exits (its live gauges go; its counters stay counted).

Labels are bounded: endpoints are URL patterns (never paths), models are ids of AiModel
rows that resolved, statuses are HTTP codes or usage statuses, upstreams are backend
names from settings.INFERENCE_BACKENDS, reasons are short codes. Never a user, a key or a
raw path. The helpers never raise: a metric must not break a call.
"""

from __future__ import annotations

import logging
import os

from django.conf import settings
from django.utils.module_loading import import_string
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

logger = logging.getLogger(__name__)

NS = "tokenbank"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
CALL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# --- HTTP (the middleware) ---------------------------------------------------------------------
REQUESTS = Counter(f"{NS}_requests", "HTTP requests answered, by URL pattern, model and status",
                   ["endpoint", "model", "status"])
REQUEST_SECONDS = Histogram(
    f"{NS}_request_duration_seconds",
    "Time to the response (a stream: to its headers; its whole length is the call's duration)",
    ["endpoint"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge(f"{NS}_requests_in_flight", "Requests being answered now (until headers)",
                  multiprocess_mode="livesum")
PAYMENT_REQUIRED = Counter(f"{NS}_payment_required", "402 answers (not enough credit)",
                           ["endpoint"])
# --- metered calls (inference.services, at settlement) ------------------------------------------
CALLS = Counter(f"{NS}_calls", "Metered calls settled, by endpoint, model and usage status",
                ["endpoint", "model", "status"])
TOKENS = Counter(f"{NS}_tokens", "Tokens charged, by model and class (prompt, completion)",
                 ["model", "class"])
CHARGED = Counter(f"{NS}_charged_micros", "Micro-dollars charged for calls, by model", ["model"])
FIRST_TOKEN_SECONDS = Histogram(f"{NS}_time_to_first_token_seconds",
                                "From the call's start to its first token", ["model"],
                                buckets=FIRST_TOKEN_BUCKETS)
CALL_SECONDS = Histogram(f"{NS}_call_duration_seconds",
                         "A metered call from its start to its settlement (streams included)",
                         ["model", "streamed"], buckets=CALL_BUCKETS)
UPSTREAM_ERRORS = Counter(f"{NS}_upstream_errors", "Calls that ended on an upstream error",
                          ["upstream"])
UPSTREAM_FALLBACKS = Counter(f"{NS}_upstream_fallbacks",
                             "Calls moved from one upstream to the next, by the one left and "
                             "how the fallback ended", ["upstream", "outcome"])
# --- refusals, the promotion, the sweeps ---------------------------------------------------------
RATE_LIMITED = Counter(f"{NS}_rate_limited", "Requests refused by a rate limit, by what was counted "
                       "(key, user, ip, register)", ["scope"])
PROMOTIONS = Counter(f"{NS}_promotions", "First-token promotion decisions (granted, or refused "
                     "with a reason)", ["outcome", "reason"])
SWEEP_RUNS = Counter(f"{NS}_sweep_runs", "Completed runs of a periodic sweep", ["sweep"])
SWEEP_SETTLED = Counter(f"{NS}_sweep_units_settled",
                        "Units a sweep settled (grants expired, holds released)", ["sweep"])
SWEEP_FAILED = Counter(f"{NS}_sweep_units_failed", "Units a sweep failed on and skipped",
                       ["sweep"])
RECONCILIATION_RUNS = Counter(f"{NS}_reconciliation_runs", "Nightly reconciliations completed")


def _safe(fn):
    def wrapper(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception:  # a metric never breaks the call it counts
            logger.warning("metrics: %s failed", fn.__name__, exc_info=True)
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_safe
def observe_request(*, endpoint: str, model: str, status: int, seconds: float) -> None:
    REQUESTS.labels(endpoint, model, str(status)).inc()
    REQUEST_SECONDS.labels(endpoint).observe(seconds)
    if status == 402:
        PAYMENT_REQUIRED.labels(endpoint).inc()


@_safe
def observe_call(*, endpoint: str, model: str, upstream: str, status: str, streamed: bool,
                 prompt_tokens: int, completion_tokens: int, cost_micros: int,
                 first_token_seconds: float | None, seconds: float,
                 upstream_error: bool) -> None:
    """One metered call, settled: what it was charged for, how long it took."""
    CALLS.labels(endpoint, model, status).inc()
    if prompt_tokens:
        TOKENS.labels(model, "prompt").inc(prompt_tokens)
    if completion_tokens:
        TOKENS.labels(model, "completion").inc(completion_tokens)
    CHARGED.labels(model).inc(cost_micros)
    if first_token_seconds is not None:
        FIRST_TOKEN_SECONDS.labels(model).observe(first_token_seconds)
    CALL_SECONDS.labels(model, "true" if streamed else "false").observe(seconds)
    if upstream_error:
        UPSTREAM_ERRORS.labels(upstream).inc()


@_safe
def upstream_fallback(*, upstream: str, outcome: str) -> None:
    """A call left `upstream` for the next one; `outcome`: "recovered" or "exhausted"."""
    UPSTREAM_FALLBACKS.labels(upstream, outcome).inc()


@_safe
def rate_limited(*, scope: str) -> None:
    RATE_LIMITED.labels(scope).inc()


@_safe
def promotion_decided(*, granted: bool, reason: str = "") -> None:
    """Counted when decided, inside the award's transaction (no on_commit callback of its own:
    the award's callbacks are its notices). An award rolled back after deciding, which
    nothing does today, would still count."""
    PROMOTIONS.labels("granted" if granted else "refused", "" if granted else reason).inc()


@_safe
def sweep_run(*, sweep: str, settled: int, failed: int) -> None:
    SWEEP_RUNS.labels(sweep).inc()
    SWEEP_SETTLED.labels(sweep).inc(settled)
    SWEEP_FAILED.labels(sweep).inc(failed)


@_safe
def reconciliation_run() -> None:
    RECONCILIATION_RUNS.inc()


# --- /metrics ---------------------------------------------------------------------------------


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def exposition() -> tuple[bytes, str]:
    """The text /metrics answers: every process's samples summed (multiprocess mode) or this
    process's, plus the collectors of settings.METRICS_COLLECTORS (gauges read from the
    database at scrape time, so any web process tells the same truth)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_ThisProcess())
    for path in getattr(settings, "METRICS_COLLECTORS", []):
        registry.register(_collector(path))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ThisProcess:
    """The default registry (ours and the process/platform collectors) inside another one."""

    def collect(self):
        return REGISTRY.collect()


_collectors: dict[str, object] = {}


def _collector(path: str):
    if path not in _collectors:
        _collectors[path] = import_string(path)()
    return _collectors[path]
