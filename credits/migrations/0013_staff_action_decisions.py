"""The staff audit log becomes append-only: a decision on a staff action is a row of its
own (StaffActionDecision); the request row keeps what was asked. This step adds the new
table and columns; 0012 moves the decisions over, 0013 drops the old columns and adds
the triggers."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("credits", "0012_hold_journal_and_sweep_failures"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="StaffActionDecision",
            fields=[
                ("action", models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, primary_key=True, related_name="decision", serialize=False, to="credits.staffaction")),
                ("outcome", models.CharField(choices=[("APPLIED", "Applied"), ("REJECTED", "Rejected")], max_length=16)),
                ("decided_at", models.DateTimeField()),
                ("note", models.CharField(blank=True, max_length=255)),
                ("result", models.CharField(blank=True, max_length=255)),
                ("idempotency_key", models.CharField(blank=True, max_length=200)),
                ("decided_by", models.ForeignKey(blank=True, help_text="Empty: applied when requested (no second approver needed).", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to=settings.AUTH_USER_MODEL)),
                ("grant", models.ForeignKey(blank=True, help_text="The grant the action created (grant, refund, positive adjustment).", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="credits.creditgrant")),
            ],
            options={"ordering": ["-decided_at"]},
        ),
        migrations.RenameField(model_name="staffaction", old_name="grant", new_name="target_grant"),
        migrations.AlterField(
            model_name="staffaction", name="target_grant",
            field=models.ForeignKey(blank=True, help_text="The grant acted on (void, expiry); a grant created is on the decision.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="staff_actions", to="credits.creditgrant"),
        ),
        migrations.AddField(
            model_name="staffaction", name="approval_reason",
            field=models.CharField(blank=True, help_text="Why it needs a second approver (empty: applied when requested).", max_length=255),
        ),
        migrations.AddField(
            model_name="staffaction", name="idempotency_key",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddConstraint(
            model_name="staffaction",
            constraint=models.UniqueConstraint(condition=models.Q(("idempotency_key", ""), _negated=True), fields=("idempotency_key",), name="staff_action_idempotency_key_unique"),
        ),
        migrations.AddIndex(
            model_name="staffaction",
            index=models.Index(fields=["requested_by", "requested_at"], name="staff_action_by_day_idx"),
        ),
    ]
