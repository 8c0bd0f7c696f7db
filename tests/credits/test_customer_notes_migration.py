"""Internal reasons apart from customer notes (credits 0016) on a database with history: the
append-only triggers stay on, no row is rewritten, and what staff wrote before reads as the
kind's default to the customer."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from credits import staff_actions
from credits.models import CreditGrant, LedgerEntry, StaffAction
from tests.books import USD

BEFORE = [("credits", "0015_staff_audit_append_only")]
AFTER = [("credits", "0016_customer_notes")]


@pytest.mark.django_db(transaction=True)
def test_old_staff_rows_keep_their_text_and_customers_read_the_default(make_user, make_staff):
    user = make_user()
    finance, finance2 = make_staff("f1@tokenbank.test", "Finance"), make_staff(
        "f2@tokenbank.test", "Finance")
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    apps = executor.loader.project_state(BEFORE).apps
    Grant, Entry = apps.get_model("credits", "CreditGrant"), apps.get_model("credits", "LedgerEntry")
    Action = apps.get_model("credits", "StaffAction")
    Account = apps.get_model("credits", "CreditAccount")
    now = timezone.now()
    Account.objects.update_or_create(user_id=user.pk, defaults={"balance_micros": 5 * USD})
    grant = Grant.objects.create(user_id=user.pk, kind="ADJUSTMENT", amount_micros=5 * USD,
                                 remaining_micros=5 * USD, granted_at=now,
                                 description="Goodwill per ticket #1042", actor_id=finance.pk,
                                 idempotency_key="staff-action:old")
    Entry.objects.create(user_id=user.pk, entry_type="GRANT", grant_id=grant.pk,
                         amount_micros=5 * USD, balance_after_micros=5 * USD,
                         description="Goodwill per ticket #1042", actor_id=finance.pk,
                         operation_key=f"grant:{grant.pk}", idempotency_key=f"grant:{grant.pk}",
                         created_at=now)
    pending = Action.objects.create(kind="GRANT", user_id=user.pk, amount_micros=500 * USD,
                                    grant_kind="ADJUSTMENT", reason="Deal #9 (internal)",
                                    requested_by_id=finance.pk, requested_at=now,
                                    approval_reason="above $100.00")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)  # with the append-only triggers in place: no row is updated
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())  # and any later ones

    entry = LedgerEntry.objects.get(user=user)
    assert entry.description == "Goodwill per ticket #1042"  # history as written
    assert entry.customer_description == "Credit from TokenBank support"
    assert CreditGrant.objects.get(pk=grant.pk).customer_description == (
        "Credit from TokenBank support")
    # A request made before, approved after: the customer reads the default note.
    staff_actions.approve(action=StaffAction.objects.get(pk=pending.pk), staff=finance2)
    new = LedgerEntry.objects.filter(user=user).latest("id")
    assert new.internal_reason == "Deal #9 (internal)"
    assert new.customer_description == "Credit from TokenBank support"
