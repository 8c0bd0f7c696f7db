"""The database itself keeps the books' history: no TRUNCATE of a history table, and a
payment event keeps what the provider sent (PostgreSQL triggers; the model refuses too)."""

import pytest
from django.db import DatabaseError, connection, transaction

from billing.models import PaymentEvent, Provider

pytestmark = [pytest.mark.postgres]

HISTORY_TABLES = ["credits_ledgerentry", "credits_creditgrant", "credits_credithold",
                  "credits_creditaccount", "credits_staffaction", "credits_staffactiondecision",
                  "credits_takeback",
                  "billing_paymentevent",
                  "billing_purchase"]


@pytest.mark.parametrize("table", HISTORY_TABLES)
def test_truncating_a_history_table_is_refused(table, user, fund):
    fund(user, 5)
    with pytest.raises(DatabaseError, match="TRUNCATE refused"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred checks pending
        cursor.execute(f"TRUNCATE {table} CASCADE")
    assert user.credit_balance == 5_000_000


@pytest.fixture
def event(db):
    return PaymentEvent.objects.create(provider=Provider.TEST, event_id="evt_1",
                                       event_type="checkout.session.completed",
                                       payload={"id": "evt_1"}, object_reference="pi_1")


@pytest.mark.parametrize("change", [
    {"payload": {"id": "evt_1", "amount": 999}}, {"event_type": "charge.refunded"},
    {"event_id": "evt_2"}, {"object_reference": "pi_other"},
])
def test_what_a_provider_sent_cannot_be_rewritten(event, change):
    with pytest.raises(DatabaseError, match="UPDATE refused"), transaction.atomic():
        PaymentEvent.objects.filter(pk=event.pk).update(**change)
    event.refresh_from_db()
    assert (event.payload, event.event_type) == ({"id": "evt_1"}, "checkout.session.completed")


def test_a_processed_event_stays_processed_and_no_event_is_deleted(event):
    from django.utils import timezone

    PaymentEvent.objects.filter(pk=event.pk).update(processed_at=timezone.now(), outcome="PROCESSED")
    with pytest.raises(DatabaseError, match="UPDATE refused"), transaction.atomic():
        PaymentEvent.objects.filter(pk=event.pk).update(processed_at=None)
    with pytest.raises(DatabaseError, match="DELETE refused"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute("DELETE FROM billing_paymentevent WHERE id = %s", [event.pk])
    assert PaymentEvent.objects.filter(pk=event.pk, processed_at__isnull=False).exists()
