"""Rate limits: requests and tokens per minute per API key, and sign-ups per hour per address.

**Per key** (ApiKeyRateThrottle, on the metered endpoints): RATE_LIMIT_REQUESTS_PER_MINUTE and
RATE_LIMIT_TOKENS_PER_MINUTE, or the key's own override (ApiKey.rate_limit_*; 0 = no limit).
Both are counted by one Lua script in Redis, so the check and the count are one atomic step:
150 simultaneous calls against 120/min admit exactly 120. The window is **fixed, anchored at
the first call** (not at the clock's minute): it opens with a key's first call, lasts 60 s on
Redis' own clock, and the next call after it opens a new one. So a burst can never straddle two
windows by accident of the clock, and `x-ratelimit-reset-*` is the window's time left.

Tokens are **reserved at admission and corrected at settlement**: a call is admitted only if
its estimate (the body's characters / 4 + max_tokens, times n) fits what is left of the
minute, and the estimate is counted at once, so simultaneous calls cannot all slip under the
limit before any of them ends (counting usage only afterwards lets a burst run over without
bound). When the call ends its real usage replaces the estimate (`correct_tokens`), so a caller
who leaves max_tokens unset is not charged its worst case for the whole minute; a call that
never started (a 400, a 402) gives its whole reservation back.

Every metered answer carries OpenAI's headers (`rate_limit_headers`); over a limit the answer is
a 429 in the envelope with `Retry-After`. Session calls (no key) count per user.

Without Redis (the database cache, for development) only requests are counted, through
Django's cache, not atomically and without the headers. If Redis cannot be reached, calls go
through and a warning is logged at most once a minute per process: the API must keep
answering when Redis is down.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.exceptions import Throttled
from rest_framework.throttling import BaseThrottle

from accounts.network import client_ip
from config.observability import metrics

logger = logging.getLogger(__name__)
_last_warning = 0.0

WINDOW_MS = 60_000
# Reserved for a call that states no max_tokens until its real usage is known.
UNSTATED_MAX_TOKENS = 1024


def _warn_once(exc: Exception) -> None:
    global _last_warning
    now = time.time()
    if now - _last_warning > 60:
        _last_warning = now
        logger.warning("Rate limiting is off: the cache is unreachable (%s)", exc)


def hit(ident: str, *, limit: int, window_seconds: int = 60) -> tuple[bool, int]:
    """Count one request for `ident` in Django's cache (clock-aligned fixed window; atomic on
    Redis, not on the database cache). Returns (allowed, seconds until the window resets)."""
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
        _warn_once(exc)
        return True, 0
    if count > limit:
        metrics.rate_limited(scope=ident.split(":", 1)[0])  # key, user, ip or register
    return count <= limit, retry_after


# KEYS[1]: the key's window (a hash: start, req, tok). ARGV: window ms, request limit,
# token limit (0 = none), tokens to reserve. Returns {admitted, requests, tokens, ms left}.
_ADMIT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local window = tonumber(ARGV[1])
local req_limit, tok_limit, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local start = tonumber(redis.call('HGET', KEYS[1], 'start') or '-1')
if start < 0 or now >= start + window then
  start = now
  redis.call('HSET', KEYS[1], 'start', start, 'req', 0, 'tok', 0)
  redis.call('PEXPIRE', KEYS[1], window + 5000)
end
local req = tonumber(redis.call('HGET', KEYS[1], 'req'))
local tok = tonumber(redis.call('HGET', KEYS[1], 'tok'))
local admitted = 1
if req_limit > 0 and req + 1 > req_limit then admitted = 0 end
if tok_limit > 0 and tok + cost > tok_limit then admitted = 0 end
if admitted == 1 then
  req = redis.call('HINCRBY', KEYS[1], 'req', 1)
  tok = redis.call('HINCRBY', KEYS[1], 'tok', cost)
end
return {admitted, req, tok, start + window - now, start}
"""

# KEYS[1]: the window; ARGV: the start it was reserved in, tokens to add (negative: give
# back). A window that has moved on is left alone (its count is another minute's).
_CORRECT = """
if tonumber(redis.call('HGET', KEYS[1], 'start') or '-1') ~= tonumber(ARGV[1]) then
  return -1
end
local tok = redis.call('HINCRBY', KEYS[1], 'tok', tonumber(ARGV[2]))
if tok < 0 then redis.call('HSET', KEYS[1], 'tok', 0); tok = 0 end
return tok
"""


@dataclass
class RateLimitState:
    """What admission decided for one call: the limits, what is left, the reservation."""

    request_limit: int
    token_limit: int
    requests_used: int = 0
    tokens_used: int = 0
    reset_ms: int = 0
    reserved_tokens: int = 0
    window_key: str = ""
    window_start: int = 0
    admitted: bool = True
    limited: str = ""  # what refused the call
    actual_tokens: object = None  # a callable giving the call's real tokens, once it ran
    corrected: bool = False

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_ms / 1000))


def _redis_client():
    """The default cache's Redis connection (its pool and timeouts), or None on another cache."""
    default = caches["default"]
    return default._cache.get_client(None, write=True) if isinstance(default, RedisCache) else None


def limits_for(request) -> tuple[str, int, int]:
    """(who is counted, requests per minute, tokens per minute) for a call; 0 = no limit."""
    requests = int(settings.RATE_LIMIT_REQUESTS_PER_MINUTE)
    tokens = int(settings.RATE_LIMIT_TOKENS_PER_MINUTE)
    auth = request.auth
    if auth is not None and hasattr(auth, "key_hash"):
        if auth.rate_limit_requests_per_minute is not None:
            requests = auth.rate_limit_requests_per_minute
        if auth.rate_limit_tokens_per_minute is not None:
            tokens = auth.rate_limit_tokens_per_minute
        return f"key:{auth.pk}", requests, tokens
    if request.user and request.user.is_authenticated:
        return f"user:{request.user.pk}", requests, tokens
    return f"ip:{client_ip(request) or 'unknown'}", requests, tokens


def estimate_tokens(data, *, limit: int = 0) -> int:
    """A call's token estimate before it runs, as OpenAI counts for its limits: the text of
    the body (every string, a quarter token per character; token ids one each) plus
    max_tokens (or max_completion_tokens), times n/best_of. A call that states neither counts
    UNSTATED_MAX_TOKENS, at most the whole `limit` (so it still runs in a fresh minute); one
    that states it wrongly counts none (validation answers it with a 400, not a 429)."""
    if not isinstance(data, dict):
        return 1
    chars, ids = 0, 0
    pending = [value for key, value in data.items() if key != "model"]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            ids += 1
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    prompt = -(-chars // 4) + ids
    if "input" in data:  # an embedding generates nothing
        return max(1, prompt)
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        max_tokens = data.get("max_completion_tokens")
    if max_tokens is None:
        unstated = prompt + UNSTATED_MAX_TOKENS
        return max(1, min(unstated, limit) if limit > 0 else unstated)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = 0
    choices = max([v for v in (data.get("n"), data.get("best_of"))
                   if isinstance(v, int) and not isinstance(v, bool) and v > 1], default=1)
    return max(1, prompt + max_tokens * choices)


def admit(request) -> RateLimitState | None:
    """Count one call (and reserve its estimated tokens) against its key's limits, atomically.
    Returns the state (admitted or not), or None when no limit applies or Redis is down."""
    ident, request_limit, token_limit = limits_for(request)
    if request_limit <= 0 and token_limit <= 0:
        return None
    state = RateLimitState(request_limit=max(0, request_limit), token_limit=max(0, token_limit))
    client = _redis_client()
    if client is None:  # the database cache: requests only, not atomic, no headers
        if request_limit <= 0:
            return None
        allowed, wait = hit(ident, limit=request_limit)
        if allowed:
            return None
        state.token_limit, state.admitted, state.limited = 0, False, "requests"
        state.requests_used, state.reset_ms = request_limit, wait * 1000
        return state
    # Reading the body may refuse it (400, 413, 415): that answer stands, nothing counted.
    cost = estimate_tokens(request.data, limit=token_limit) if token_limit > 0 else 0
    state.window_key = f"ratelimit:{ident}:minute"
    try:
        admitted, used_requests, used_tokens, reset_ms, start = client.register_script(_ADMIT)(
            keys=[state.window_key], args=[WINDOW_MS, state.request_limit, state.token_limit, cost])
    except Exception as exc:  # Redis is down: fail open
        _warn_once(exc)
        return None
    state.admitted = bool(admitted)
    state.requests_used, state.tokens_used = int(used_requests), int(used_tokens)
    state.reset_ms, state.window_start = max(0, int(reset_ms)), int(start)
    if state.admitted:
        state.reserved_tokens = cost
    elif state.request_limit and state.requests_used + 1 > state.request_limit:
        state.limited = "requests"
    else:
        state.limited = "tokens"
        state.reserved_tokens = cost  # what it asked for, for the message
    if not state.admitted:
        metrics.rate_limited(scope=ident.split(":", 1)[0])  # key, user or ip
    return state


def correct_tokens(state: RateLimitState | None, actual_tokens: int | None) -> None:
    """Replace a call's reserved tokens by what it really used (None: it never ran, all
    back). At most once; never raises (the call is over, a count is not worth an error)."""
    if state is None or state.corrected or not state.admitted or not state.window_key:
        return
    state.corrected = True
    delta = (actual_tokens or 0) - state.reserved_tokens
    if not delta:
        return
    try:
        client = _redis_client()
        if client is not None:
            client.register_script(_CORRECT)(keys=[state.window_key],
                                             args=[state.window_start, delta])
    except Exception as exc:
        _warn_once(exc)


def count_actual_tokens(request, actual) -> None:
    """The metered view's one call: `actual()` gives the call's real tokens once it ended
    (prompt + completion, from the usage it was charged for). The API's base view
    (accounts.rest) corrects the reservation with it when the answer is finished."""
    state = getattr(request, "rate_limit", None)
    if state is not None:
        state.actual_tokens = actual


def reset_text(ms: int) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "20ms", "1s", "1.5s", "6m0s"."""
    if ms < 1000:
        return f"{max(0, ms)}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def rate_limit_headers(state: RateLimitState | None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits that apply (none when none does)."""
    if state is None:
        return {}
    headers = {}
    if state.request_limit:
        headers.update({
            "x-ratelimit-limit-requests": str(state.request_limit),
            "x-ratelimit-remaining-requests": str(max(0, state.request_limit
                                                      - state.requests_used)),
            "x-ratelimit-reset-requests": reset_text(state.reset_ms),
        })
    if state.token_limit:
        headers.update({
            "x-ratelimit-limit-tokens": str(state.token_limit),
            "x-ratelimit-remaining-tokens": str(max(0, state.token_limit - state.tokens_used)),
            "x-ratelimit-reset-tokens": reset_text(state.reset_ms),
        })
    return headers


class ApiKeyRateThrottle(BaseThrottle):
    """Requests and tokens per minute per key (per user for session calls); see `admit`.
    Leaves its decision on the request (`request.rate_limit`, for the headers and the
    correction) and refuses with a 429 that names the limit."""

    def allow_request(self, request, view) -> bool:
        state = request.rate_limit = admit(request)
        if state is None or state.admitted:
            return True
        if state.limited == "tokens":
            over = (f"; this call may use {state.reserved_tokens} tokens, more than the whole "
                    f"limit: lower max_tokens" if state.reserved_tokens > state.token_limit else "")
            limited = (f"tokens per minute of this API key (limit {state.token_limit}, used "
                       f"{state.tokens_used}{over})")
        else:
            limited = f"requests per minute of this API key (limit {state.request_limit})"
        raise RateLimited(state.retry_after, limited=limited)

    def wait(self) -> float:
        return 60.0


def finish_rate_limited(request, response):
    """Called by the API's base view on every answer: the x-ratelimit-* headers, and the
    token reservation corrected with the call's real usage (at the end of a stream)."""
    state = getattr(request, "rate_limit", None)
    if state is None:
        return response
    for name, value in rate_limit_headers(state).items():
        response[name] = value
    if not state.admitted:
        return response
    if not getattr(response, "streaming", False):
        correct_tokens(state, _actual(state))
        return response
    content = response.streaming_content
    if hasattr(content, "__aiter__"):
        async def corrected():
            try:
                async for part in content:
                    yield part
            finally:
                correct_tokens(state, _actual(state))
    else:
        def corrected():
            try:
                yield from content
            finally:
                correct_tokens(state, _actual(state))
    response.streaming_content = corrected()
    return response


def _actual(state: RateLimitState) -> int | None:
    if state.actual_tokens is None:
        return None
    try:
        return int(state.actual_tokens())
    except Exception:  # keep the reservation rather than fail an answer
        logger.exception("Rate limit: could not read a call's real tokens")
        return state.reserved_tokens


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
