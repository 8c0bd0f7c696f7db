"""Requests-per-minute per API key, counted in Django's cache (Redis when REDIS_URL is
set, the database otherwise) so every process shares the count.

Fixed one-minute windows. Fails open: if the cache cannot be reached the request goes
through and a warning is logged (at most once a minute per process), because the API
must keep answering when Redis is down. On the database cache the count is not atomic
under races, so a burst may pass a few requests over the limit.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from accounts.network import client_ip

logger = logging.getLogger(__name__)
_last_warning = 0.0


def hit(ident: str, *, limit: int, window_seconds: int = 60) -> tuple[bool, int]:
    """Count one request for `ident`. Returns (allowed, seconds until the window resets)."""
    global _last_warning
    now = time.time()
    window = int(now // window_seconds)
    retry_after = max(1, int((window + 1) * window_seconds - now + 0.999))
    key = f"ratelimit:{ident}:{window_seconds}:{window}"
    try:
        try:
            count = cache.incr(key)
        except ValueError:  # first request of the window
            count = 1 if cache.add(key, 1, timeout=window_seconds + 5) else cache.incr(key)
    except Exception as exc:  # the cache is down: fail open, loudly but not per request
        if now - _last_warning > 60:
            _last_warning = now
            logger.warning("Rate limiting is off: the cache is unreachable (%s)", exc)
        return True, 0
    return count <= limit, retry_after


class ApiKeyRateThrottle(BaseThrottle):
    """API_RATE_LIMIT_PER_MINUTE requests per key (per user for session calls); 0 = off."""

    def allow_request(self, request, view) -> bool:
        limit = int(settings.API_RATE_LIMIT_PER_MINUTE)
        if limit <= 0:
            return True
        auth = request.auth
        if auth is not None and hasattr(auth, "key_hash"):
            ident = f"key:{auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        allowed, self._retry_after = hit(ident, limit=limit)
        return allowed

    def wait(self) -> float:
        return float(getattr(self, "_retry_after", 60))


class RegistrationRateThrottle(BaseThrottle):
    """REGISTER_RATE_LIMIT_PER_HOUR sign-ups per client address; 0 = off.

    The address is accounts.network.client_ip (X-Forwarded-For believed only from
    TRUSTED_PROXIES), so a client cannot dodge the limit with a forged header."""

    def get_ident(self, request) -> str:
        return client_ip(request) or "unknown"

    def allow_request(self, request, view) -> bool:
        limit = int(settings.REGISTER_RATE_LIMIT_PER_HOUR)
        if limit <= 0:
            return True
        allowed, self._retry_after = hit(
            f"register:{self.get_ident(request)}", limit=limit, window_seconds=3600
        )
        return allowed

    def wait(self) -> float:
        return float(getattr(self, "_retry_after", 3600))
