"""Run callables at the same moment in real threads, each on its own DB connection."""

import threading
from collections.abc import Callable

from django.db import connection


def run_concurrently(fn: Callable[[int], object], count: int, timeout: float = 60) -> list:
    """Start `count` threads that call fn(i) together; return each result or exception."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except Exception as exc:  # the caller inspects what each thread got
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results
