"""A web worker's garbage collector, set up once the application is loaded
(config/gunicorn.py's `post_worker_init`).

CPython's cycle collector walks every tracked object of the generation it collects. A loaded
Django process holds ≈ 130,000 of them (modules, classes, Django's and DRF's caches) that
live as long as the process, and every full collection walked them all. `gc.freeze()` after
start-up moves them to a permanent generation that is never walked again (the URL patterns,
and so every view module, are loaded first). Measured with gc callbacks (the collecting
thread's CPU time) in the two workers of bench/gateway.py at 256 streams, in one run: the
collector's share of a worker's CPU went from 13-16% to 11%, and its longest pause, during
which every stream of the process waits, from 124-139 ms to 77-93 ms. What is left is
mostly the young generations' collections of the streams' own objects; a first-generation
threshold of 50,000 instead of 700 saved no CPU per stream in the bench and took 12% more
memory, so Python's thresholds stay.
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
