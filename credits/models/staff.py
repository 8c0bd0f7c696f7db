"""Staff money actions: the audit row and its four-eyes approval."""


from django.conf import settings
from django.db import models
from django.db.models import Q

from credits.models.ledger import CreditGrant, GrantKind


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


class StaffAction(models.Model):
    """The audit record of one staff money action, and its approval request.

    Written by credits.staff_actions only. A row is never deleted; its status
    moves once, from PENDING to APPLIED or REJECTED (or is APPLIED at once when
    no second pair of eyes is needed). The ledger entries it caused carry the
    same actor and reason and the grant's idempotency key `staff-action:<id>`."""

    kind = models.CharField(max_length=16, choices=StaffActionKind.choices)
    status = models.CharField(max_length=16, choices=StaffActionStatus.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_actions"
    )
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="staff_actions",
        help_text="The grant acted on (void, expiry) or created (grant, refund, positive adjust).",
    )
    amount_micros = models.BigIntegerField(
        null=True, blank=True, help_text="Signed for adjustments."
    )
    grant_kind = models.CharField(max_length=16, choices=GrantKind.choices, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    usage_reference = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=255)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=255, blank=True)
    result = models.CharField(max_length=255, blank=True)

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
            models.CheckConstraint(
                condition=Q(status="PENDING") | Q(decided_at__isnull=False),
                name="staff_action_decided_has_time",
            ),
        ]
        indexes = [models.Index(fields=["status", "requested_at"], name="staff_action_status_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} for {self.user_id} ({self.status})"
