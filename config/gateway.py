"""The metered API's own way through Django: a call made with an API key skips the pages'
middleware.

Under ASGI, Django runs every `MiddlewareMixin` middleware of a request through
`sync_to_async`: two hops to a thread started for that request, per middleware. The pages
need that stack (sessions, CSRF, authentication, messages, CSP, the login lockout); a metered
call authenticated by its API key needs none of it, and pays for it on every call.
`config.asgi` sends such calls (GATEWAY_PATHS, with an `Authorization` header) to
`GatewayHandler`: Django's own ASGI handler (request, URL resolver, DRF view, response,
disconnect handling) with the GATEWAY_MIDDLEWARE list, each one async or run inline.
Everything else, browser calls with a session cookie included, goes through the site.
"""

from __future__ import annotations

from django.conf import settings
from django.middleware import common, security

from config.observability import tracing
from config.request_threads import RequestThreadsHandler

# The metered endpoints (inference.urls): the calls that hold streams open and pay per call.
GATEWAY_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                           "/api/inference"})


def takes_gateway(scope) -> bool:
    """A metered endpoint called with an `Authorization` header (an API key)."""
    if scope["type"] != "http" or scope["path"] not in GATEWAY_PATHS:
        return False
    return any(name == b"authorization" for name, _ in scope["headers"])


class GatewayHandler(RequestThreadsHandler):
    """Django's ASGI handler with GATEWAY_MIDDLEWARE instead of MIDDLEWARE (and reused
    request threads, as on the site)."""

    def load_middleware(self, is_async=False):
        # BaseHandler builds the chain from settings.MIDDLEWARE: this handler's list stands
        # in for it while the chain is built, once, at start-up (tracing's first, when on).
        site_middleware = settings.MIDDLEWARE
        settings.MIDDLEWARE = [*tracing.request_middleware(site_middleware),
                               *settings.GATEWAY_MIDDLEWARE]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = site_middleware


class InlineMiddleware:
    """Runs a `MiddlewareMixin` middleware that does no I/O inline in the event loop,
    where Django would hop to a thread for each of its methods."""

    sync_capable = False
    async_capable = True

    async def __acall__(self, request):
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineMiddleware, security.SecurityMiddleware):
    """The HTTPS redirect and security headers, as on the site."""


class CommonMiddleware(InlineMiddleware, common.CommonMiddleware):
    """The Host check against ALLOWED_HOSTS, as on the site."""
