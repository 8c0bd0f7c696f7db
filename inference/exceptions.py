"""The inference app's own errors. The DRF exception handler (inference.errors) maps them
onto OpenAI's error envelope using `status`, `type` and `code`."""

from __future__ import annotations


class InferenceError(Exception):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code:
            self.code = code


class InvalidRequest(InferenceError):
    pass


class ModelNotFound(InferenceError):
    status = 404
    code = "model_not_found"


class InsufficientCreditsForCall(InferenceError):
    """The worst case of the call does not fit the available balance; nothing generated."""

    status = 402
    type = "insufficient_credits"
    code = "insufficient_credits"

    def __init__(self, message: str, *, required_micros: int, available_micros: int,
                 affordable_tokens: int):
        super().__init__(message)
        self.required_micros = required_micros
        self.available_micros = available_micros
        self.affordable_tokens = affordable_tokens


class PromotionNotGranted(InferenceError):
    """The call relied on the pending promotion, and the first token came too late to earn it."""

    status = 402
    type = "insufficient_credits"
    code = "promotion_not_granted"


class IdempotencyKeyReused(InferenceError):
    status = 409
    code = "idempotency_key_reused"


class UpstreamError(InferenceError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UnsupportedParameter(InferenceError):
    """A request field the model's backend cannot serve: refused, never silently dropped."""

    code = "unsupported_parameter"


class UpstreamRefused(UpstreamError):
    """The upstream answered 400/422: the request itself is wrong for it (no fallback)."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_invalid_request"


class UpstreamUnavailable(UpstreamError):
    """Connect error, 5xx or 429 before any output: the next deployment may serve the call."""

    def __init__(self, message: str, *, status: int | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.upstream_status = status


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class StreamTimeLimit(InferenceError):
    """A stream ran past STREAM_MAX_SECONDS: it ends, charged for what it delivered."""

    status = 504
    type = "server_error"
    code = "stream_time_limit"
