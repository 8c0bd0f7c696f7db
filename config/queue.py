"""Enqueue Celery tasks by name once the current transaction commits.

Services never import task modules (Zulip's `queue_event_on_commit` habit): they name
the task. `retry=False` makes a down broker fail in one short attempt instead of a
retry loop inside a request; what happens then is the caller's choice: run the task
right here (`inline_if_broker_down`), or drop it and rely on a periodic catch-up.
"""

from __future__ import annotations

import importlib
import logging

from django.db import transaction

# Our app, not celery.current_app: that one is per thread, and a thread that never set it
# (a live server's, a worker pool's) gets an empty default app.
from config.celery import app as celery_app

logger = logging.getLogger(__name__)


def enqueue_on_commit(task_name: str, *args, inline_if_broker_down: bool = False,
                      describe: str = "") -> None:
    """Enqueue `task_name(*args)` after the commit (now, outside a transaction); nothing
    if the transaction rolls back. Arguments must be JSON-serializable. `describe` names
    the work in the log line written when the broker is down."""
    what = describe or f"{task_name}{args!r}"

    def enqueue() -> None:  # a named callable: Django logs a robust callback's failure by name
        _enqueue(task_name, args, inline_if_broker_down, what)

    transaction.on_commit(enqueue, robust=True)


def _task(task_name: str):
    if task_name not in celery_app.tasks:
        # A web process has not imported the task's module yet (the worker does at start).
        # By name, not with the loader's import_default_modules(): that makes Celery's Django
        # fixup run django.setup() again in the middle of a request, which applies LOGGING
        # anew (dropping every handler added since start-up) and runs the system checks.
        importlib.import_module(task_name.rpartition(".")[0])
    return celery_app.tasks[task_name]


def _enqueue(task_name: str, args: tuple, inline_if_broker_down: bool, what: str) -> None:
    task = _task(task_name)
    try:
        task.apply_async(args, retry=False)
    except Exception:
        if not inline_if_broker_down:
            logger.warning("Could not enqueue %s (broker down?); the periodic catch-up will "
                           "send it.", what, exc_info=True)
            return
        logger.warning("Could not enqueue %s (broker down?); running it here", what,
                       exc_info=True)
        task.run(*args)
