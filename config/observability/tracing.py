"""OpenTelemetry traces, only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Unset (the default), nothing of OpenTelemetry is even imported and every helper here is a
flag test. Set, `setup_tracing()` installs a tracer provider exporting OTLP over HTTP (the
standard OTEL_* variables configure it: endpoint, headers, OTEL_SERVICE_NAME, sampling) and
the official instrumentations: Django (requests), psycopg (queries), aiohttp and httpx
(upstream calls) and Celery (tasks). It runs once per process, before Django loads its
middleware: from config/asgi.py and config/wsgi.py, and in each Celery worker process
(config/celery.py).
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

_enabled = False


def configured() -> bool:
    from django.conf import settings

    # Reading a setting loads the settings, which load .env into the environment first.
    return bool(getattr(settings, "OTEL_EXPORTER_OTLP_ENDPOINT", "")
                or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    return _enabled


def request_middleware(middleware: list[str]) -> list[str]:
    """The middleware setup_tracing's Django instrumentation inserted into `middleware`
    (settings.MIDDLEWARE), for a handler that builds its own list (config.gateway)."""
    return [path for path in middleware if path.startswith("opentelemetry.instrumentation.")]


def setup_tracing(*, service: str = "web", celery: bool = False) -> bool:
    """Install the provider and the instrumentations (idempotent). Returns whether tracing
    is on. A broken OpenTelemetry setup is logged and leaves the process serving untraced."""
    global _enabled
    if _enabled or not configured():
        return _enabled
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME") or f"tokenbank-{service}"
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        DjangoInstrumentor().instrument()
        PsycopgInstrumentor().instrument(enable_commenter=False)
        HTTPXClientInstrumentor().instrument()
        AioHttpClientInstrumentor().instrument()
        if celery:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument()
    except Exception:
        logger.exception("OpenTelemetry could not be set up; serving without traces")
        return False
    _enabled = True
    return True


def annotate_request(ctx) -> None:
    """Name the request's server span after what the request was about."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        for key, value in ctx.fields().items():
            span.set_attribute(f"tokenbank.{key}", value)


def record_call(*, request_id: str, model: str, endpoint: str, status: str,
                prompt_tokens: int, completion_tokens: int, cost_micros: int,
                seconds: float) -> None:
    """A span for one metered call, from its start to its settlement, under the request's span
    (made at settlement, so a stream that outlives its response's span is still whole)."""
    if not _enabled:
        return
    try:
        from opentelemetry import trace

        end = time.time_ns()
        span = trace.get_tracer("tokenbank").start_span(
            "tokenbank.metered_call", start_time=end - int(seconds * 1e9),
            attributes={"tokenbank.request_id": request_id, "tokenbank.model": model,
                        "tokenbank.endpoint": endpoint, "tokenbank.status": status,
                        "tokenbank.prompt_tokens": prompt_tokens,
                        "tokenbank.completion_tokens": completion_tokens,
                        "tokenbank.charged_micros": cost_micros})
        span.end(end_time=end)
    except Exception:
        logger.warning("tracing: the call span of %s was not recorded", request_id, exc_info=True)
