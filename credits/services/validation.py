"""Argument checks every ledger service shares (they raise before anything is locked)."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from credits.exceptions import InvalidAmount


def now_or(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else timezone.now()


def require_amount(value: object, *, name: str = "amount_micros", allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount(f"{name} must be an integer number of micro-dollars, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidAmount(f"{name} must be {'zero or ' if allow_zero else ''}positive, got {value}.")
    return value


def require_text(value: str | None, *, name: str) -> str:
    text = (value or "").strip()
    if not text:
        raise InvalidAmount(f"A {name} is required.")
    return text


