import importlib
import os
import socket
import threading
import time

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection

from accounts.models import User
from config.celery import app as celery_app
from credits import services
from credits.models import GrantKind
from tests.books import USD
from tests.browser import browser_page

# The API-key fixtures and the rate-limit reset serve every test directory.
pytest_plugins = ["tests.api_fixtures"]


def _flush_may_truncate_history() -> None:
    """Between transactional tests Django empties every table with TRUNCATE, which the
    history tables refuse on PostgreSQL (credits/migrations/0010): the test flush, and only
    it, says so inside its own transaction."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    sql_flush = DatabaseOperations.sql_flush

    def flush_allowed(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        statements = sql_flush(self, style, tables, reset_sequences=reset_sequences,
                               allow_cascade=allow_cascade)
        return ["SET LOCAL tokenbank.allow_truncate = 'on';", *statements] if statements else []

    DatabaseOperations.sql_flush = flush_allowed


_flush_may_truncate_history()

class AsgiLiveServer:
    """The site served by uvicorn (ASGI, as the Procfile serves it) in a thread of the test
    process, on the test database; static files through Django's finders. Replaces
    pytest-django's WSGI live server, so HTTP tests exercise the async gateway (and API-key
    calls to the metered endpoints its lean path, config/gateway.py)."""

    def __init__(self, host: str = "localhost"):
        import uvicorn
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
        from django.test.utils import modify_settings

        from config.asgi import application

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self._live_server_modified_settings = modify_settings(ALLOWED_HOSTS={"append": host})
        config = uvicorn.Config(ASGIStaticFilesHandler(application), host="127.0.0.1",
                                port=port, log_level="warning", lifespan="on", backlog=1024)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="asgi-live-server",
                                       daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the ASGI live server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __str__(self) -> str:
        return self.url


@pytest.fixture(scope="session")
def live_server(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        server = AsgiLiveServer()
        yield server
        server.stop()

# The staff groups' permissions, built by these data migrations.
_STAFF_GROUP_MIGRATIONS = [
    ("credits.migrations.0005_default_promotion_and_staff_groups", "create_groups"),
    ("credits.migrations.0006_variant_weight_zero_and_more_staff_permissions", "add_permissions"),
    ("credits.migrations.0008_abuse_control_permissions", "add_permissions"),
    ("billing.migrations.0003_staff_group_permissions", "add_permissions"),
]


def pytest_collection_modifyitems(config, items):
    """PostgreSQL-only tests skip on SQLite, saying so; under CI (REQUIRE_POSTGRES) they must run."""
    if connection.vendor == "postgresql":
        return
    if os.environ.get("REQUIRE_POSTGRES"):
        raise pytest.UsageError("REQUIRE_POSTGRES is set but DATABASE_URL is not PostgreSQL")
    skip = pytest.mark.skip(
        reason="needs real PostgreSQL (row locks, concurrent transactions); "
        "set DATABASE_URL=postgres://... to run"
    )
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (REQUIRE_POSTGRES=1) nothing may skip: a skip is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("REQUIRE_POSTGRES") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may skip: {report.longrepr}"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The database cache (used when REDIS_URL is unset) needs its table."""
    with django_db_blocker.unblock():
        call_command("createcachetable", verbosity=0)


@pytest.fixture(scope="session", autouse=True)
def _end_leaked_connections(django_db_setup, django_db_blocker):
    """A live-server thread may still hold a connection when the session ends (a stream the
    browser walked away from); end those sessions so the test database can be dropped."""
    yield
    # Only ever the test database (none exists when no test used the database).
    if connection.vendor == "postgresql" and connection.settings_dict["NAME"].startswith("test_"):
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def make_user(db):
    counter = {"n": 0}

    def make(email: str | None = None, **fields) -> User:
        counter["n"] += 1
        return User.objects.create_user(
            email or f"user{counter['n']}@example.com", "correct-horse-battery", **fields
        )

    return make


@pytest.fixture
def user(make_user) -> User:
    return make_user("ada@example.com")


@pytest.fixture
def fund(db):
    """fund(user, usd=10, kind=PURCHASED, **kw) -> grant"""

    def grant(user, usd: int = 10, kind: str = GrantKind.PURCHASED, **kwargs):
        return services.add_credit(user=user, amount_micros=usd * USD, kind=kind, **kwargs)

    return grant


@pytest.fixture
def eager_tasks():
    """Enqueued tasks run inline, so a test sees what the worker would send."""
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager = conf.task_eager_propagates = True
    yield
    conf.task_always_eager, conf.task_eager_propagates = saved


# --- staff ---------------------------------------------------------------------------------


@pytest.fixture
def staff_groups(db):
    """The groups exactly as the migrations build them (a transactional test's flush
    may have emptied the table, so build them again, idempotently)."""
    for module, function in _STAFF_GROUP_MIGRATIONS:
        getattr(importlib.import_module(module), function)(global_apps, None)
    return {name: Group.objects.get(name=name) for name in ("Support", "Finance")}


@pytest.fixture
def make_staff(db, staff_groups):
    def make(email: str, *groups: str, superuser: bool = False) -> User:
        staff = User.objects.create_user(email, "correct-horse-battery", is_staff=True,
                                         is_superuser=superuser)
        for name in groups:
            staff.groups.add(staff_groups[name])
        return User.objects.get(pk=staff.pk)  # fresh permission cache

    return make


@pytest.fixture
def support(make_staff) -> User:
    return make_staff("support@tokenbank.test", "Support")


@pytest.fixture
def finance(make_staff) -> User:
    return make_staff("finance@tokenbank.test", "Finance")


@pytest.fixture
def finance2(make_staff) -> User:
    return make_staff("finance2@tokenbank.test", "Finance")


@pytest.fixture
def bare_staff(make_staff) -> User:
    """Staff with no group: may log in to admin, may not move money."""
    return make_staff("intern@tokenbank.test")


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture
def page(live_server, transactional_db, monkeypatch):
    """A fresh headless Chromium page on the live server (tests.browser)."""
    with browser_page(monkeypatch, base_url=live_server.url) as tab:
        yield tab
