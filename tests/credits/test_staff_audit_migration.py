"""The staff audit's move to decision rows (credits 0013-0015) keeps every past decision."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from credits.models import GrantKind, StaffAction, StaffActionStatus
from tests.books import USD

BEFORE = [("credits", "0012_hold_journal_and_sweep_failures")]
AFTER = [("credits", "0015_staff_audit_append_only")]


@pytest.mark.django_db(transaction=True)
def test_past_decisions_become_decision_rows_and_pending_requests_stay_pending(
        make_user, fund):
    user, finance, finance2 = make_user(), make_user(), make_user()
    void_target = fund(user, 5)
    created = fund(user, 7, kind=GrantKind.ADJUSTMENT)
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("credits", "StaffAction")
    now = timezone.now()
    common = {"user_id": user.pk, "requested_by_id": finance.pk, "requested_at": now,
              "reason": "r"}
    at_once = old.objects.create(kind="GRANT", status="APPLIED", amount_micros=7 * USD,
                                 grant_id=created.pk, decided_at=now, result="Granted $7.00",
                                 **common)
    approved = old.objects.create(kind="VOID", status="APPLIED", grant_id=void_target.pk,
                                  decided_by_id=finance2.pk, decided_at=now,
                                  decision_note="ok", result="Voided $5.00", **common)
    rejected = old.objects.create(kind="ADJUST", status="REJECTED", amount_micros=500 * USD,
                                  decided_by_id=finance2.pk, decided_at=now,
                                  decision_note="no", result="Rejected", **common)
    pending = old.objects.create(kind="GRANT", status="PENDING", amount_micros=300 * USD,
                                 result="Awaiting a second approver (above $100.00).",
                                 **common)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    # Then on to the newest migrations, which the models read below (and later tests need).
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    rows = {a.pk: a for a in StaffAction.objects.select_related("decision")}
    assert (rows[at_once.pk].status, rows[at_once.pk].decided_by) == (
        StaffActionStatus.APPLIED, None)
    assert rows[at_once.pk].grant == created and rows[at_once.pk].target_grant is None
    assert rows[approved.pk].decided_by == finance2
    assert rows[approved.pk].decision_note == "ok" and rows[approved.pk].grant == void_target
    assert rows[rejected.pk].status == StaffActionStatus.REJECTED
    assert rows[rejected.pk].result == "Rejected"
    assert rows[pending.pk].status == StaffActionStatus.PENDING
    assert rows[pending.pk].result == "Awaiting a second approver (above $100.00)."
    assert set(StaffAction.objects.pending().values_list("pk", flat=True)) == {pending.pk}
