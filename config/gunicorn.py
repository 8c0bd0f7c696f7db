"""gunicorn's settings for the web process (Procfile: `gunicorn -c config/gunicorn.py ...`).

Prometheus multiprocess mode (PROMETHEUS_MULTIPROC_DIR): the master empties the directory
when it starts (a fresh server starts its counters at zero, which Prometheus handles as a
reset) and marks each worker dead when it exits, so its live gauges stop counting while its
counters stay summed. LOG_FORMAT=json makes gunicorn's own lines (and the uvicorn workers',
which reuse its handlers) JSON too.
"""

import os
import shutil
from pathlib import Path

import environ

# The same .env the settings read (gunicorn's master reads no Django settings).
environ.Env.read_env(Path(__file__).resolve().parent.parent / ".env", overwrite=False)


def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        if path.exists():
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        path.mkdir(parents=True, exist_ok=True)


def post_worker_init(worker):
    # The application is loaded (Django set up): the collector is set for serving.
    from config.serving import tune_garbage_collector

    tune_garbage_collector()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


if os.environ.get("LOG_FORMAT", "plain") == "json":
    from config.observability.logging import gunicorn_logging

    logconfig_dict = gunicorn_logging(level=os.environ.get("LOG_LEVEL", "INFO"))
