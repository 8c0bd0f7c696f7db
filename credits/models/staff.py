"""Staff money actions: the audit row of each request, and the decision on it.

Both tables are append-only (the model refuses, and on PostgreSQL a trigger): a request
is written once when it is made, its decision (applied or rejected) is a row of its own,
and the status is derived from whether, and how, it was decided."""


from django.conf import settings
from django.db import models
from django.db.models import Case, F, Q, Value, When

from credits.models.ledger import CreditGrant, GrantKind, ImmutableEntryError

_APPEND_ONLY = "The staff audit log is append-only: record a decision, never rewrite a row."


class StaffActionKind(models.TextChoices):
    GRANT = "GRANT", "Grant credit"
    ADJUST = "ADJUST", "Adjust balance"
    REFUND = "REFUND", "Refund"
    VOID = "VOID", "Void rest of grant"
    CHANGE_EXPIRY = "CHANGE_EXPIRY", "Change grant expiry"
    EXPIRE_NOW = "EXPIRE_NOW", "Expire grant now"
    REVOKE_KEYS = "REVOKE_KEYS", "Revoke API keys"


class StaffActionStatus(models.TextChoices):
    PENDING = "PENDING", "Pending approval"
    APPLIED = "APPLIED", "Applied"
    REJECTED = "REJECTED", "Rejected"


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ImmutableEntryError(_APPEND_ONLY)

    def delete(self):
        raise ImmutableEntryError(_APPEND_ONLY)


class AppendOnlyModel(models.Model):
    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableEntryError(_APPEND_ONLY)
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableEntryError(_APPEND_ONLY)


class StaffActionQuerySet(AppendOnlyQuerySet):
    def with_status(self):
        """Annotate `current_status` (PENDING until a decision row exists)."""
        return self.annotate(current_status=Case(
            When(decision__isnull=True, then=Value(StaffActionStatus.PENDING)),
            default=F("decision__outcome"), output_field=models.CharField()))

    def pending(self):
        return self.filter(decision__isnull=True)


class StaffAction(AppendOnlyModel):
    """The audit record of one staff money action as it was requested.

    Written once by credits.staff_actions, never changed. It is applied at once (its
    StaffActionDecision is written in the same transaction) or waits for a second staff
    member (`approval_reason` says why) whose decision is then its own row. The ledger
    entries it caused carry the same actor and reason and the grant's idempotency key
    `staff-action:<id>`."""

    kind = models.CharField(max_length=16, choices=StaffActionKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_actions"
    )
    target_grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="staff_actions",
        help_text="The grant acted on (void, expiry); a grant created is on the decision.",
    )
    amount_micros = models.BigIntegerField(
        null=True, blank=True, help_text="Signed for adjustments."
    )
    grant_kind = models.CharField(max_length=16, choices=GrantKind.choices, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    usage_reference = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=255, help_text="Internal: staff and the audit only.")
    customer_note = models.CharField(
        max_length=255, blank=True, default="",
        help_text="What the customer reads (history line, notification); empty: the kind's "
                  "default (credits.staff_actions.CUSTOMER_NOTE_DEFAULTS).")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField()
    approval_reason = models.CharField(
        max_length=255, blank=True,
        help_text="Why it needs a second approver (empty: applied when requested).")
    # The confirmation's one-time token (`<token>:<target>`): a second submit replays this row.
    idempotency_key = models.CharField(max_length=200, blank=True)

    objects = StaffActionQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at", "-id"]
        permissions = [
            ("grant_credit", "Can grant credit"),
            ("adjust_credit", "Can adjust a balance"),
            ("refund_credit", "Can refund credit"),
            ("void_grant", "Can void the rest of a grant"),
            ("change_grant_expiry", "Can change a grant's expiry or expire it now"),
            ("revoke_api_keys", "Can revoke a user's API keys"),
            ("exceed_support_limit", "Can grant and refund above SUPPORT_GRANT_LIMIT_USD"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], condition=~Q(idempotency_key=""),
                                    name="staff_action_idempotency_key_unique"),
        ]
        indexes = [
            models.Index(fields=["requested_by", "requested_at"], name="staff_action_by_day_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} for {self.user_id} ({self.status})"

    def refresh_from_db(self, *args, **kwargs):
        super().refresh_from_db(*args, **kwargs)
        # The decision may have been written since: read it again too.
        if StaffAction.decision.related.is_cached(self):
            StaffAction.decision.related.delete_cached_value(self)

    # --- derived from the decision row ---------------------------------------------------

    @property
    def decided(self) -> "StaffActionDecision | None":
        try:
            return self.decision
        except StaffActionDecision.DoesNotExist:
            return None

    @property
    def status(self) -> str:
        decision = self.decided
        return StaffActionStatus.PENDING if decision is None else decision.outcome

    def get_status_display(self) -> str:
        return StaffActionStatus(self.status).label

    @property
    def decided_by(self):
        return self.decided.decided_by if self.decided else None

    @property
    def decided_at(self):
        return self.decided.decided_at if self.decided else None

    @property
    def decision_note(self) -> str:
        return self.decided.note if self.decided else ""

    @property
    def result(self) -> str:
        if self.decided:
            return self.decided.result
        return f"Awaiting a second approver ({self.approval_reason})."

    @property
    def grant(self) -> CreditGrant | None:
        """The grant acted on, or the one the action created."""
        if self.target_grant_id is not None:
            return self.target_grant
        return self.decided.grant if self.decided else None

    @property
    def grant_id(self) -> int | None:
        if self.target_grant_id is not None:
            return self.target_grant_id
        return self.decided.grant_id if self.decided else None


class StaffActionDecision(AppendOnlyModel):
    """What became of a StaffAction: applied (by a second staff member, or at once when none
    was needed: `decided_by` empty) or rejected. At most one per action (its primary key)."""

    action = models.OneToOneField(StaffAction, primary_key=True, on_delete=models.PROTECT,
                                  related_name="decision")
    outcome = models.CharField(max_length=16, choices=[
        (StaffActionStatus.APPLIED.value, StaffActionStatus.APPLIED.label),
        (StaffActionStatus.REJECTED.value, StaffActionStatus.REJECTED.label)])
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
        related_name="+", help_text="Empty: applied when requested (no second approver needed).")
    decided_at = models.DateTimeField()
    note = models.CharField(max_length=255, blank=True)
    result = models.CharField(max_length=255, blank=True)
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The grant the action created (grant, refund, positive adjustment).")
    # The approve/reject confirmation's one-time token: a second submit replays this decision.
    idempotency_key = models.CharField(max_length=200, blank=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-decided_at"]

    def __str__(self) -> str:
        return f"{self.outcome} staff action #{self.action_id}"
