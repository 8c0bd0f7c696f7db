"""GET /healthz and GET /readyz (answered by config.observability.middleware, before host
checks, redirects, sessions and authentication, so a load balancer may poll them every second).

/healthz: the process answers; nothing else is touched.
/readyz: the database answers a query within READYZ_TIMEOUT_SECONDS, Redis answers a PING
(when REDIS_URL is set) and every migration on disk is applied. 200 naming each check, or 503
naming the ones that failed. The body says only ok/failed; the reason goes to the log, once
per change, so an unauthenticated poll learns no host names.
"""

from __future__ import annotations

import logging
import threading

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg_pool import PoolTimeout

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_migrations_applied = False  # once seen applied, they stay so for this process's code
_expected_migrations: set[tuple[str, str]] | None = None
_replacements: dict[tuple[str, str], set[tuple[str, str]]] = {}
_redis = None
_last_failures: frozenset[str] = frozenset()


def healthz() -> tuple[int, dict]:
    return 200, {"status": "ok"}


def readyz() -> tuple[int, dict]:
    """Run the checks (blocking: call it from a thread). Returns (status code, body)."""
    global _last_failures
    checks: dict[str, str] = {}
    problems: dict[str, str] = {}
    database = connections[DEFAULT_DB_ALIAS]
    name = database.vendor  # "postgresql" (or "sqlite" on a developer's machine)
    database_ok, applied = False, None
    try:
        applied = _query_database(database)
        checks[name], database_ok = "ok", True
    except Exception as exc:
        checks[name] = "failed"
        problems[name] = f"{type(exc).__name__}: {exc}"
    if settings.REDIS_URL:
        try:
            _redis_client().ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = "failed"
            problems["redis"] = f"{type(exc).__name__}: {exc}"
    if not database_ok:
        checks["migrations"] = "unknown"  # the database did not answer
    else:
        missing = _unapplied(applied)
        checks["migrations"] = "failed" if missing else "ok"
        if missing:
            problems["migrations"] = f"not applied: {', '.join(sorted(missing))}"
    failed = frozenset(problems)
    with _lock:
        changed, _last_failures = failed != _last_failures, failed
    if changed:
        if failed:
            logger.warning("readyz: not ready: %s", "; ".join(f"{k}: {v}" for k, v in problems.items()))
        else:
            logger.info("readyz: ready again")
    if failed:
        return 503, {"status": "unavailable", "failed": sorted(failed), "checks": checks}
    return 200, {"status": "ok", "checks": checks}


def _timeout() -> float:
    return float(getattr(settings, "READYZ_TIMEOUT_SECONDS", 2))


def _query_database(database) -> set[tuple[str, str]] | None:
    """SELECT 1 (and the applied migrations until they are all seen) within the timeout.
    A pooled connection is borrowed straight from the pool, waiting at most the timeout
    (not DB_POOL_TIMEOUT_SECONDS); a broken one goes back and the pool drops it."""
    want_migrations = not _migrations_applied
    pool = getattr(database, "pool", None) if database.vendor == "postgresql" else None
    if pool is not None:
        pool.open()  # as Django does before its first borrow (nothing if open already)
        try:
            return _query_pool(pool, want_migrations)
        except PoolTimeout:
            raise  # no connection within the timeout: not ready
        except psycopg.OperationalError:
            # A connection from before an outage: the pool drops it; one more try on another.
            return _query_pool(pool, want_migrations)
    try:
        with database.cursor() as cursor:
            cursor.execute("SELECT 1")
            if want_migrations:
                cursor.execute("SELECT app, name FROM django_migrations")
                return {tuple(row) for row in cursor.fetchall()}
            return None
    except Exception:
        database.close_if_unusable_or_obsolete()
        raise


def _query_pool(pool, want_migrations: bool) -> set[tuple[str, str]] | None:
    with pool.connection(timeout=_timeout()) as conn, conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {int(_timeout() * 1000)}")
        conn.execute("SELECT 1")
        if want_migrations:
            return set(conn.execute("SELECT app, name FROM django_migrations").fetchall())
    return None


def _unapplied(applied: set[tuple[str, str]] | None) -> set[str]:
    """The leaf migrations on disk not in `applied` (a squashed one counts as applied when
    all it replaces are). Read from disk once per process; once all are seen applied, the
    check costs nothing more."""
    global _migrations_applied, _expected_migrations, _replacements
    if _migrations_applied or applied is None:
        return set()
    if _expected_migrations is None:
        from django.db.migrations.loader import MigrationLoader

        loader = MigrationLoader(None, ignore_no_migrations=True)
        _replacements = {key: set(m.replaces) for key, m in loader.replacements.items()}
        _expected_migrations = set(loader.graph.leaf_nodes())
    missing = {f"{app}.{name}" for app, name in _expected_migrations
               if not _is_applied((app, name), applied)}
    if not missing:
        _migrations_applied = True
    return missing


def _is_applied(key: tuple[str, str], applied: set[tuple[str, str]]) -> bool:
    replaced = _replacements.get(key)
    return key in applied or bool(replaced and replaced <= applied)


def _redis_client():
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=_timeout(),
                                      socket_timeout=_timeout())
    return _redis
