"""Model instances to and from hand-written SQL, for the few queries every metered call makes
(the API key's lookup, the ledger's locks and entries, the usage record).

Django's ORM compiles each query again on every call, and `Model.objects.raw` maps the
cursor's columns onto the model's fields again on every query: on this kind of box that is
2 to 4 times the cost of the round trip itself. Here the SQL names each model's columns in its
fields' order (`columns`), so a row maps by position, and each model's converters (what
Django applies to a column read from the database: aware datetimes on SQLite, JSON, ...)
are worked out once per database.
"""

from __future__ import annotations

from functools import cache

import psycopg
from django.db import connection
from django.db.models import Model


@cache
def columns(model: type[Model], alias: str) -> str:
    """`alias.column, ...` for each of the model's concrete fields, in their order."""
    return ", ".join(f"{alias}.{connection.ops.quote_name(field.column)}"
                     for field in model._meta.concrete_fields)


@cache
def _reader(model: type[Model], vendor: str):
    fields = model._meta.concrete_fields
    names = [field.attname for field in fields]
    converters = []
    for index, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        found = [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)]
        if found:
            converters.append((index, col, found))
    return names, converters


def cursor():
    """A cursor for these hand-written statements. On PostgreSQL it binds parameters on the
    server: a statement's text is then the same on every call, and psycopg prepares it once
    it has run `prepare_threshold` times on a connection (5), so PostgreSQL reuses its plan;
    planning was most of the server's time for these short statements. Django's own cursor
    wraps it (query logging, execute wrappers). Elsewhere, Django's cursor."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.ensure_connection()
    return connection._prepare_cursor(_PreparingCursor(connection.connection))


# What a prepared statement's run raises when the server's prepared statement is stale or
# gone; a statement's other refusals (constraints, locks) are the caller's to handle.
_STALE_PREPARED = (psycopg.errors.FeatureNotSupported, psycopg.errors.InvalidSqlStatementName)


class _PreparingCursor(psycopg.Cursor):
    """Prepares every statement it runs (the connection keeps `prepared_max` of them)."""

    def execute(self, query, params=None, *, prepare=True, binary=None):
        try:
            super().execute(query, params, prepare=prepare, binary=binary)
        except _STALE_PREPARED:
            # A migration changed the type of a column the statement returns ("cached plan
            # must not change result type"), or the statement is gone from the server (a
            # pooler's new backend): psycopg would run the stale statement again on each
            # call, and fail each time, for the connection's life. Forget them all on both
            # sides; they are prepared again on their next runs.
            if self.connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                raise  # the transaction is aborted; its rollback forgets them too
            self.connection.execute("DEALLOCATE ALL")  # psycopg empties its cache on it
            super().execute(query, params, prepare=prepare, binary=binary)  # nothing had run
        if self._query is None:  # a prepared run leaves none; Django's query log reads it
            self._query = _LoggedQuery(self.connection, query, params)
        return self


class _LoggedQuery:
    """The statement as Django's query log shows it, with its parameters, composed only if
    read (django.db.backends logging, CaptureQueriesContext)."""

    def __init__(self, conn, query, params):
        self._conn, self._sql, self._params = conn, query, params

    @property
    def query(self) -> bytes:
        return psycopg.ClientCursor(self._conn).mogrify(self._sql, self._params).encode()


def fetch(sql: str, params, *models: type[Model]) -> list[tuple]:
    """The rows of `sql` (which selects `columns()` of each of `models`, in turn, then any
    other values), each as a tuple: the instances, as the ORM would build them, then the
    other values as read."""
    readers = [(model, *_reader(model, connection.vendor)) for model in models]
    with cursor() as reading:
        reading.execute(sql, params)
        rows = reading.fetchall()
    built = []
    for row in rows:
        instances, start = [], 0
        for model, names, converters in readers:
            values = list(row[start:start + len(names)])
            for index, col, functions in converters:
                for convert in functions:
                    values[index] = convert(values[index], col, connection)
            instances.append(model.from_db(connection.alias, names, values))
            start += len(names)
        built.append((*instances, *row[start:]))
    return built


def insert_sql(model: type[Model], instances: list, returning: str = "") -> tuple[str, list]:
    """A multi-row INSERT for `instances` (primary keys set by the caller or the database),
    each value prepared for the database as `Model.save` prepares it."""
    fields = [f for f in model._meta.concrete_fields
              if not (f.primary_key and getattr(instances[0], f.attname) is None)]
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection)
              for obj in instances for f in fields]
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (f"INSERT INTO {model._meta.db_table} ({', '.join(f.column for f in fields)}) "
           f"VALUES {', '.join([row] * len(instances))}")
    return sql + (f" RETURNING {returning}" if returning else ""), params


def insert(instance: Model) -> None:
    """INSERT one new instance in plain SQL (an auto primary key is left to the database and
    not read back). Raises IntegrityError as the ORM does."""
    with cursor() as writing:
        writing.execute(*insert_sql(type(instance), [instance]))
