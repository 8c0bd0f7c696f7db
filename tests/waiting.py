"""Waiting in a test for something another thread or process does."""

import time
from collections.abc import Callable

from django.db import OperationalError


def wait_for(condition: Callable[[], object], seconds: float = 5,
             interval: float = 0.02) -> bool:
    """Poll `condition` until it holds or `seconds` pass; whether it held.

    A read that meets SQLite's table lock (the shared in-memory test database refuses a read
    while a server thread writes that table, where PostgreSQL would answer) is "not yet"."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _holds(condition):
            return True
        time.sleep(interval)
    return _holds(condition)


def _holds(condition: Callable[[], object]) -> bool:
    try:
        return bool(condition())
    except OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
