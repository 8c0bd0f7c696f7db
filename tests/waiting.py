"""Waiting in a test for something another thread or process does."""

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], seconds: float = 5,
             interval: float = 0.02) -> bool:
    """Poll `condition` until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
