"""The Celery processes' share of observability (connected by config/celery.py).

Each task runs in its own RequestContext (request_id = the task's id), so its log lines
say which run wrote them; each prefork worker process sets up tracing after the fork (when
OTEL_EXPORTER_OTLP_ENDPOINT is set) and is marked dead for Prometheus when it exits.
"""

from __future__ import annotations

import os

from celery import signals

from config.observability import context, tracing


def connect() -> None:
    signals.task_prerun.connect(_task_started, dispatch_uid="tokenbank.observability.task_prerun",
                                weak=False)
    signals.task_postrun.connect(_task_ended, dispatch_uid="tokenbank.observability.task_postrun",
                                 weak=False)
    signals.worker_process_init.connect(_process_started, weak=False,
                                        dispatch_uid="tokenbank.observability.process_init")
    signals.worker_process_shutdown.connect(_process_ended, weak=False,
                                            dispatch_uid="tokenbank.observability.process_end")


def _task_started(task_id=None, task=None, **kwargs) -> None:
    context.begin(f"task-{task_id}" if task_id else None)


def _task_ended(**kwargs) -> None:
    context.end()


def _process_started(**kwargs) -> None:
    tracing.setup_tracing(service="worker", celery=True)


def _process_ended(pid=None, **kwargs) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
