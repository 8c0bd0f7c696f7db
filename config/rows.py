"""Model instances from hand-written SQL, for the few queries every metered call makes (the
API key's lookup, the ledger's locks).

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


def insert(instance: Model) -> None:
    """INSERT a new instance in plain SQL, each value prepared as `Model.save` prepares it
    (the field's `pre_save`, then its database preparation). An auto primary key is left to
    the database and not read back. Raises IntegrityError as the ORM does."""
    model = type(instance)
    fields = [field for field in model._meta.concrete_fields
              if not (field.primary_key and getattr(instance, field.attname) is None)]
    values = [field.get_db_prep_save(field.pre_save(instance, True), connection)
              for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(model, tuple(field.column for field in fields)), values)


@cache
def _insert_sql(model: type[Model], column_names: tuple[str, ...]) -> str:
    quote = connection.ops.quote_name
    return (f"INSERT INTO {quote(model._meta.db_table)} "
            f"({', '.join(quote(name) for name in column_names)}) "
            f"VALUES ({', '.join(['%s'] * len(column_names))})")
