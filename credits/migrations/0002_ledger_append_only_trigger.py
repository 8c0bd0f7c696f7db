"""On PostgreSQL, refuse UPDATE and DELETE of ledger entries in the database too.

TRUNCATE (used only by test teardown) does not fire row triggers. SQLite relies
on the model and queryset guards."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION credits_ledger_entry_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'credits_ledgerentry is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER credits_ledger_entry_append_only
    BEFORE UPDATE OR DELETE ON credits_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION credits_ledger_entry_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS credits_ledger_entry_append_only ON credits_ledgerentry;
DROP FUNCTION IF EXISTS credits_ledger_entry_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("credits", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
