"""A web worker's garbage collector (config/serving.py): what start-up loaded is frozen, in
each worker the Procfile's gunicorn starts, so no collection walks it again."""

import gc
import re

import httpx
import pytest

from config.serving import tune_garbage_collector
from tests.config.servers import start_site, stop
from tests.waiting import wait_for


@pytest.fixture
def unfrozen_after():
    yield
    gc.unfreeze()


def test_a_tuned_worker_never_walks_what_start_up_loaded_again(settings, unfrozen_after):
    settings.GC_FREEZE_AFTER_START = True
    tracked = len(gc.get_objects())

    tune_garbage_collector()

    # The loaded modules, classes and caches are out of every collection's walk.
    assert gc.get_freeze_count() > 10_000
    assert len(gc.get_objects()) < tracked - 10_000


def test_switched_off_the_collector_walks_everything_as_python_does(settings, unfrozen_after):
    settings.GC_FREEZE_AFTER_START = False

    tune_garbage_collector()

    assert gc.get_freeze_count() == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_each_gunicorn_worker_freezes_what_it_loaded_and_serves(tmp_path):
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        server, url = start_site(workers=2, env={"LOG_LEVEL": "INFO"}, stderr=stderr)
    try:
        wait_for(lambda: len(frozen_counts(log)) == 2, seconds=10, interval=0.1)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        stop(server)
    frozen = frozen_counts(log)
    assert len(frozen) == 2, log.read_text()[-2000:]
    assert all(int(count) > 10_000 for count in frozen)


def frozen_counts(log) -> list[str]:
    """What each worker logged it froze, in the server's log so far."""
    return re.findall(r"Garbage collector: (\d+) objects loaded at start-up frozen",
                      log.read_text())
