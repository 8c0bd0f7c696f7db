"""A web worker's garbage collector, set up once the application is loaded
(config/gunicorn.py's `post_worker_init`).

Every full collection of CPython's cycle collector walks every tracked object, and a loaded
Django process holds ≈ 130,000 that live as long as it does (modules, classes, Django's and
DRF's caches): walking them cost a serving worker CPU and paused all its streams.
`gc.freeze()` moves them out of every later walk (figures: the README's Serving and
Benchmarks). The URL patterns are loaded first, so every view module is frozen too, and a
view that cannot be imported stops the worker at boot rather than failing requests.
"""

from __future__ import annotations

import gc
import logging

from django.conf import settings
from django.urls import get_resolver

logger = logging.getLogger(__name__)


def tune_garbage_collector() -> None:
    """Freeze what start-up loaded (setting GC_FREEZE_AFTER_START). Call once per worker
    process, after the application is loaded and before it serves."""
    if not settings.GC_FREEZE_AFTER_START:
        return
    get_resolver().url_patterns  # noqa: B018 (imports every view module now)
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    logger.info("Garbage collector: %d objects loaded at start-up frozen", gc.get_freeze_count())
