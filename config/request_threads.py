"""Django's ASGI handler, with each request's thread reused instead of started for it.

Under ASGI, Django runs a request's sync steps (sync middleware, the request signals,
rendering a DRF Response, closing the response) on a thread of that request's own
(asgiref's ThreadSensitiveContext), so one slow step never holds up another request. It
starts that thread for the request, and a second one to join it when the request ends:
0.2 to 0.45 ms of CPU per request here (bench/request_threads.py), and under load a new
thread waits to be scheduled before the request can go on. `RequestThreadsHandler` keeps
the one thread per request but takes it from `RequestThreads`, which hands finished
threads out again (asgiref's documented `ThreadSensitiveContext(executor=...)`).
"""

from __future__ import annotations

import collections
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections


class RequestThreads:
    """Threads for requests' sync steps, one request at a time each.

    A thread goes back to the idle list only once everything its request gave it has run
    (a last step queued behind that work: a request cancelled while its render still runs
    leaves it busy), so a request never waits behind another's leftovers. That last step
    hands back any database connection the request left open on the thread (Django's
    request_finished does it, but is skipped when the response fails to send). At most
    `keep_idle` idle threads are kept; the others are let go."""

    def __init__(self, keep_idle: int = 64):
        self.keep_idle = keep_idle
        self._idle: collections.deque[ThreadPoolExecutor] = collections.deque()
        # A forked child has none of these threads.
        os.register_at_fork(after_in_child=self._idle.clear)

    def take(self) -> ThreadPoolExecutor:
        try:
            return self._idle.pop()
        except IndexError:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        def idle(_):  # runs on that thread, after everything queued before it
            if len(self._idle) < self.keep_idle:
                self._idle.append(executor)  # deque appends are thread-safe
            else:
                executor.shutdown(wait=False)

        # Shut down (the interpreter is exiting): it is not used again.
        with contextlib.suppress(RuntimeError):
            executor.submit(close_old_connections).add_done_callback(idle)

    def idle_count(self) -> int:
        return len(self._idle)


request_threads = RequestThreads()


class RequestThreadsHandler(ASGIHandler):
    """Django's ASGI handler; each request's thread comes from `request_threads`."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = request_threads.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            request_threads.give_back(executor)
