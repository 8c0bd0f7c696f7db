"""The current request's identity, for log lines and spans.

One mutable `RequestContext` per request, held in a contextvar by the middleware: the
view, its ledger threads (asgiref copies the context, so they share the same object) and a
stream's generator all fill in and read the same fields. Under ASGI each request is its
own task, so nothing leaks between requests; under WSGI the middleware clears it after.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import asdict, dataclass


@dataclass
class RequestContext:
    request_id: str = ""
    user_id: int | None = None
    key_id: int | None = None
    model: str = ""

    def fields(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "tokenbank_request", default=None)


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def begin(request_id: str | None = None) -> RequestContext:
    """A fresh context for a request (the middleware's)."""
    ctx = RequestContext(request_id=request_id or new_request_id())
    _current.set(ctx)
    return ctx


def end() -> None:
    _current.set(None)


def current() -> RequestContext | None:
    return _current.get()


def bind(**fields) -> None:
    """Name what this request is about (request_id, user_id, key_id, model); outside a
    request (a task, a shell) it opens a context, so a task's log lines carry them too."""
    ctx = _current.get()
    if ctx is None:
        ctx = RequestContext()
        _current.set(ctx)
    for name, value in fields.items():
        setattr(ctx, name, value)
