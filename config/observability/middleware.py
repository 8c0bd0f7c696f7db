"""The first middleware: the operators' endpoints, then every request counted and named.

/healthz, /readyz and /metrics are answered here, before the host check (a load balancer
polls by address), the HTTPS redirect, sessions and authentication: cheap, and never a
redirect or a 400 for a probe. /metrics is limited by METRICS_BEARER_TOKEN or
METRICS_ALLOWED_IPS (the scraper's own address, REMOTE_ADDR: Prometheus scrapes each
process's host directly, and X-Forwarded-For would let anyone in).

Django runs it in async mode only when the middleware under it are async too; otherwise in
the thread where the whole chain runs, at no extra cost.

Every other request gets a RequestContext (its request id, then user, key and model as the
view learns them) and is counted by URL pattern, model and status when its response starts.
Async under ASGI, so the gateway's streams never hop threads for it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import time
from functools import lru_cache

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, JsonResponse

from config import health
from config.observability import context, metrics, tracing

OPERATOR_PATHS = ("/healthz", "/readyz", "/metrics")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


class ObservabilityMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        if request.path in OPERATOR_PATHS:
            return _operator_response(request)
        started = self._begin(request)
        try:
            response = self.get_response(request)
        finally:
            metrics.IN_FLIGHT.dec()
        self._finish(request, response, started)
        if not (response.streaming or isinstance(request, ASGIRequest)):
            # A WSGI thread serves the next request next; an ASGI request is a task of its
            # own, and Django's 4xx/5xx log line, written after this returns, keeps the fields.
            context.end()
        return response

    async def __acall__(self, request):
        if request.path in OPERATOR_PATHS:
            if request.path == "/healthz":
                return _operator_response(request)
            # readyz and the database gauges block: a thread, never the event loop.
            return await sync_to_async(_operator_response)(request)
        started = self._begin(request)
        try:
            response = await self.get_response(request)
        finally:
            metrics.IN_FLIGHT.dec()
        self._finish(request, response, started)
        return response

    @staticmethod
    def _begin(request) -> float:
        incoming = request.headers.get("X-Request-Id", "")
        context.begin(incoming if _SAFE_REQUEST_ID.match(incoming) else None)
        metrics.IN_FLIGHT.inc()
        return time.monotonic()

    @staticmethod
    def _finish(request, response, started: float) -> None:
        ctx = context.current()
        model = ctx.model if ctx else ""
        metrics.observe_request(endpoint=_endpoint(request), model=model,
                                status=response.status_code, seconds=time.monotonic() - started)
        if ctx is not None:
            if "X-Request-Id" not in response:
                response["X-Request-Id"] = ctx.request_id
            if tracing.enabled():
                tracing.annotate_request(ctx)


def _endpoint(request) -> str:
    """The URL pattern (bounded), never the path."""
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return match.route
    if request.path.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return "static"
    return "unmatched"


def _operator_response(request) -> HttpResponse:
    path = request.path
    if path == "/healthz":
        status, body = health.healthz()
    elif path == "/readyz":
        status, body = health.readyz()
    else:
        if not metrics_allowed(request):
            return JsonResponse({"error": "forbidden: set METRICS_BEARER_TOKEN or "
                                          "METRICS_ALLOWED_IPS"}, status=403)
        payload, content_type = metrics.exposition()
        return HttpResponse(payload, content_type=content_type)
    response = HttpResponse(json.dumps(body), content_type="application/json", status=status)
    response["Cache-Control"] = "no-store"
    # Polled every second: config.health logs a change of state once, not every 503.
    response._has_been_logged = True
    return response


def metrics_allowed(request) -> bool:
    """A bearer token equal to METRICS_BEARER_TOKEN, or a client address in METRICS_ALLOWED_IPS."""
    token = getattr(settings, "METRICS_BEARER_TOKEN", "")
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(settings.METRICS_ALLOWED_IPS)))


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> list:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]
