"""Requests-per-minute per API key and sign-ups per hour per address, counted in Django's
cache (Redis when REDIS_URL is set, the database otherwise) so every process shares the count.

Fixed windows (a minute, an hour). Fails open: if the cache cannot be reached the request goes
through and a warning is logged (at most once a minute per process), because the API
must keep answering when Redis is down. On the database cache the count is not atomic
under races, so a burst may pass a few requests over the limit.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.exceptions import Throttled
from rest_framework.throttling import BaseThrottle

from accounts.network import client_ip
from config.observability import metrics

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
    if count > limit:
        metrics.rate_limited(scope=ident.split(":", 1)[0])  # key, user, ip or register
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


class RateLimited(Throttled):
    """A 429 that names what was limited; the API's error envelope says it
    ("Rate limit reached for sign-ups from this address. ...")."""

    def __init__(self, wait: float | None = None, *, limited: str):
        super().__init__(wait)
        self.limited = limited


REGISTRATION_LIMITED = "sign-ups from this address"


def registration_allowed(request) -> tuple[bool, int]:
    """Count one sign-up attempt from the request's client address (accounts.network.client_ip,
    so a forged X-Forwarded-For does not dodge it). Returns (allowed, seconds until the window
    resets). REGISTER_RATE_LIMIT_PER_HOUR attempts an hour; 0 = off.

    The API's /api/auth/register and the web sign-up form share this one counter: an address
    over the limit gets a 429 from either door."""
    limit = int(settings.REGISTER_RATE_LIMIT_PER_HOUR)
    if limit <= 0:
        return True, 0
    return hit(f"register:{client_ip(request) or 'unknown'}", limit=limit, window_seconds=3600)


def registration_limited_message(wait_seconds: int) -> str:
    """What the sign-up page says over the limit: what was limited and when to come back."""
    minutes = max(1, -(-int(wait_seconds) // 60))
    return (f"Too many sign-ups from your address in the last hour. "
            f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.")


class RegistrationRateThrottle(BaseThrottle):
    """The API door of registration_allowed (REGISTER_RATE_LIMIT_PER_HOUR per address)."""

    limited = REGISTRATION_LIMITED

    def allow_request(self, request, view) -> bool:
        allowed, self._retry_after = registration_allowed(request)
        return allowed

    def wait(self) -> float:
        return float(getattr(self, "_retry_after", 3600))
