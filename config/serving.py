"""A web worker's garbage collector, set up once the application is loaded
(config/gunicorn.py's `post_worker_init`).

CPython's cycle collector walks every tracked object of the generation it collects. A loaded
Django process holds ≈ 150,000 of them (modules, classes, Django's and DRF's caches) that
live as long as the process, so a full collection in a serving worker took 90-150 ms of CPU
and stopped every stream of the process meanwhile; measured with gc callbacks under
bench/gateway.py, the collector was 13-17% of a worker's CPU at 256 streams. `gc.freeze()`
after start-up moves what is loaded to a permanent generation that is never walked again
(the URL patterns, and so every view module, are loaded first). A higher first-generation
threshold was measured too (50,000): no CPU saved beyond the freeze's, 12% more memory.
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
