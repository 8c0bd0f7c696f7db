"""The request row loses the columns a decision used to overwrite; on PostgreSQL both staff
audit tables refuse UPDATE and DELETE (as the ledger entries, 0002) and the decisions'
table refuses TRUNCATE (as the other history tables, 0010)."""

import importlib

from django.db import migrations

_guards = importlib.import_module("credits.migrations.0010_history_guards")

TABLES = ["credits_staffaction", "credits_staffactiondecision"]

FUNCTION = """
CREATE OR REPLACE FUNCTION credits_staff_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION, params=None)
    for table in TABLES:
        schema_editor.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION credits_staff_audit_append_only();", params=None)
    schema_editor.execute(_guards.guard_sql("credits_staffactiondecision"), params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP TRIGGER IF EXISTS credits_staffactiondecision_no_truncate "
                          "ON credits_staffactiondecision;", params=None)
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table};",
                              params=None)
    schema_editor.execute("DROP FUNCTION IF EXISTS credits_staff_audit_append_only();",
                          params=None)


class Migration(migrations.Migration):
    dependencies = [("credits", "0014_staff_action_decisions_data")]
    operations = [
        migrations.RemoveConstraint(model_name="staffaction", name="staff_action_decided_has_time"),
        migrations.RemoveIndex(model_name="staffaction", name="staff_action_status_idx"),
        migrations.RemoveField(model_name="staffaction", name="status"),
        migrations.RemoveField(model_name="staffaction", name="decided_by"),
        migrations.RemoveField(model_name="staffaction", name="decided_at"),
        migrations.RemoveField(model_name="staffaction", name="decision_note"),
        migrations.RemoveField(model_name="staffaction", name="result"),
        migrations.RunPython(forward, backward),
    ]
