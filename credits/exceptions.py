"""The credits app's own errors. Doors (API, admin, tasks) translate them."""

from credits.money import format_usd


class CreditError(Exception):
    """Base class: a credit operation was refused and nothing was written."""

    code = "credit_error"


class InvalidAmount(CreditError, ValueError):
    code = "invalid_amount"


class UnknownUser(CreditError, LookupError):
    code = "unknown_user"


class InsufficientCredits(CreditError):
    code = "insufficient_credits"

    def __init__(self, *, required_micros: int, available_micros: int, message: str = ""):
        self.required_micros = required_micros
        self.available_micros = available_micros
        super().__init__(
            message
            or f"Insufficient credits: ${format_usd(required_micros)} required, "
            f"${format_usd(available_micros)} available."
        )


class IdempotencyConflict(CreditError):
    """The idempotency key was used before with different arguments."""

    code = "idempotency_conflict"


class HoldNotActive(CreditError):
    code = "hold_not_active"


class CaptureExceedsHold(CreditError):
    code = "capture_exceeds_hold"


class GrantNotActive(CreditError):
    code = "grant_not_active"
