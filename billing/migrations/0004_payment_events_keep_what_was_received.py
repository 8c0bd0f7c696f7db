"""Payment events are the record of what a provider told us: on PostgreSQL, what was
received (provider, event id, type, payload, reference, time) can never change, a processed
event stays processed, and no event is deleted or truncated away. Processing may still
stamp its outcome once and count redeliveries."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION billing_payment_event_keeps_history() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'billing_paymentevent keeps history: DELETE refused'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.provider IS DISTINCT FROM OLD.provider OR NEW.event_id IS DISTINCT FROM OLD.event_id
       OR NEW.event_type IS DISTINCT FROM OLD.event_type
       OR NEW.payload::text IS DISTINCT FROM OLD.payload::text
       OR NEW.object_reference IS DISTINCT FROM OLD.object_reference
       OR NEW.received_at IS DISTINCT FROM OLD.received_at
       OR (OLD.processed_at IS NOT NULL AND NEW.processed_at IS DISTINCT FROM OLD.processed_at)
       OR NEW.deliveries < OLD.deliveries THEN
        RAISE EXCEPTION 'billing_paymentevent keeps what was received: UPDATE refused'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER billing_payment_event_keeps_history
    BEFORE UPDATE OR DELETE ON billing_paymentevent
    FOR EACH ROW EXECUTE FUNCTION billing_payment_event_keeps_history();
CREATE TRIGGER billing_paymentevent_no_truncate BEFORE TRUNCATE ON billing_paymentevent
    FOR EACH STATEMENT EXECUTE FUNCTION tokenbank_refuse_truncate();
CREATE TRIGGER billing_purchase_no_truncate BEFORE TRUNCATE ON billing_purchase
    FOR EACH STATEMENT EXECUTE FUNCTION tokenbank_refuse_truncate();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS billing_payment_event_keeps_history ON billing_paymentevent;
DROP TRIGGER IF EXISTS billing_paymentevent_no_truncate ON billing_paymentevent;
DROP TRIGGER IF EXISTS billing_purchase_no_truncate ON billing_purchase;
DROP FUNCTION IF EXISTS billing_payment_event_keeps_history();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_staff_group_permissions"),
                    ("credits", "0010_history_guards")]
    operations = [migrations.RunPython(forward, backward)]
