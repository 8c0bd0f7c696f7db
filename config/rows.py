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


def fetch(sql: str, params, *models: type[Model]) -> list[tuple]:
    """The rows of `sql` (which selects `columns()` of each of `models`, in turn, then any
    other values), each as a tuple: the instances, as the ORM would build them, then the
    other values as read."""
    readers = [(model, *_reader(model, connection.vendor)) for model in models]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
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
    with connection.cursor() as cursor:
        cursor.execute(*insert_sql(type(instance), [instance]))
