"""The Celery app: `celery -A config worker` and `celery -A config beat`.

Every setting comes from config/settings.py under the CELERY_ namespace
(CELERY_TASK_TIME_LIMIT -> task_time_limit); the periodic schedule is
settings.CELERY_BEAT_SCHEDULE. Tasks live in each app's tasks.py.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Task contexts for the logs, tracing per worker process, Prometheus's dead workers.
from config.observability import celery as _observability  # noqa: E402

_observability.connect()
