"""On PostgreSQL, TRUNCATE of a history table is refused too: row triggers (0002) do not
fire for TRUNCATE, so a statement-level trigger guards each table whose rows are the books.

The one exception is a session that sets `tokenbank.allow_truncate = 'on'` inside its own
transaction: the test suite's flush between transactional tests does (tests/conftest.py);
nothing in the product does."""

from django.db import migrations

GUARDED_TABLES = ["credits_ledgerentry", "credits_creditgrant", "credits_credithold",
                  "credits_creditaccount", "credits_staffaction"]

FUNCTION = """
CREATE OR REPLACE FUNCTION tokenbank_refuse_truncate() RETURNS trigger AS $$
BEGIN
    IF current_setting('tokenbank.allow_truncate', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION '% keeps history: TRUNCATE refused', TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""


def guard_sql(table: str) -> str:
    return (f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION tokenbank_refuse_truncate();")


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)
        for table in GUARDED_TABLES:
            schema_editor.execute(guard_sql(table), params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for table in GUARDED_TABLES:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table};",
                                  params=None)


class Migration(migrations.Migration):
    dependencies = [("credits", "0009_credit_account")]
    operations = [migrations.RunPython(forward, backward)]
