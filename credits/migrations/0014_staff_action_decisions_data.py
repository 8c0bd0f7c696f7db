"""Each decided staff action gets its StaffActionDecision (from the columns 0013 drops); a
grant the action created moves from the request to the decision."""

import re

from django.db import migrations

CREATING_KINDS = ["GRANT", "REFUND", "ADJUST"]


def forward(apps, schema_editor):
    StaffAction = apps.get_model("credits", "StaffAction")
    StaffActionDecision = apps.get_model("credits", "StaffActionDecision")
    for action in StaffAction.objects.order_by("pk").iterator():
        if action.status == "PENDING":
            found = re.search(r"\((.*)\)", action.result or "")
            StaffAction.objects.filter(pk=action.pk).update(
                approval_reason=found.group(1) if found else "above the approval threshold")
            continue
        StaffActionDecision.objects.create(
            action_id=action.pk, outcome=action.status, decided_by_id=action.decided_by_id,
            decided_at=action.decided_at, note=action.decision_note, result=action.result,
            grant_id=action.target_grant_id if action.kind in CREATING_KINDS else None)
        if action.decided_by_id is not None:  # it waited for a second approver
            StaffAction.objects.filter(pk=action.pk).update(
                approval_reason="above the approval threshold")
    StaffAction.objects.filter(kind__in=CREATING_KINDS).update(target_grant=None)


def backward(apps, schema_editor):
    StaffAction = apps.get_model("credits", "StaffAction")
    StaffActionDecision = apps.get_model("credits", "StaffActionDecision")
    for decision in StaffActionDecision.objects.iterator():
        changes = {"status": decision.outcome, "decided_by_id": decision.decided_by_id,
                   "decided_at": decision.decided_at, "decision_note": decision.note,
                   "result": decision.result}
        if decision.grant_id is not None:
            changes["target_grant_id"] = decision.grant_id
        StaffAction.objects.filter(pk=decision.action_id).update(**changes)
    StaffActionDecision.objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("credits", "0013_staff_action_decisions")]
    operations = [migrations.RunPython(forward, backward)]
