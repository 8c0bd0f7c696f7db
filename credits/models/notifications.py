"""What users were told about their credit (one row per occurrence: at most once)."""


from django.conf import settings
from django.db import models

from credits.models.ledger import CreditGrant


class NotificationEvent(models.TextChoices):
    PROMOTION_GRANTED = "PROMOTION_GRANTED", "Promotional credit granted"
    CREDITS_EXPIRING = "CREDITS_EXPIRING", "Credits expiring soon"
    CREDITS_EXPIRED = "CREDITS_EXPIRED", "Credits expired"
    LOW_BALANCE = "LOW_BALANCE", "Low balance"
    BALANCE_EXHAUSTED = "BALANCE_EXHAUSTED", "Balance exhausted"
    # A staff member changed the account (credits.staff_actions, a clawback): the customer
    # note is what they read.
    CREDIT_ADDED = "CREDIT_ADDED", "Credit added"
    CREDIT_REFUNDED = "CREDIT_REFUNDED", "Refund"
    CREDIT_REMOVED = "CREDIT_REMOVED", "Credit removed"
    EXPIRY_CHANGED = "EXPIRY_CHANGED", "Expiry changed"


class Notification(models.Model):
    """What we told a user, once: the unique (user, event, key) row is claimed
    before the email goes out, so a retry or a second worker never sends it again.
    `key` names the occurrence (a grant, a funding episode). The dashboard lists these."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="credit_notifications"
    )
    event = models.CharField(max_length=32, choices=NotificationEvent.choices)
    key = models.CharField(max_length=200)
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    subject = models.CharField(max_length=255)
    summary = models.CharField(max_length=500)
    created_at = models.DateTimeField()
    emailed_at = models.DateTimeField(null=True, blank=True)
    # Never retried (at most once): the failure is kept for operators.
    email_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "event", "key"], name="notification_once_per_user_event_key"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="notification_user_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} ({self.key}) for {self.user_id}"
