"""Buying credit: the packages on offer, each purchase, and every provider event received.

Money moves only through credits.services; a Purchase records what was paid and
points at the PURCHASED grant it produced.
"""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q

from credits.money import display_usd

MICROS_PER_CENT = 10_000


class CreditPackage(models.Model):
    """A ready-made amount on the buy page ($10, $25, $100 seeded; editable in admin)."""

    name = models.CharField(max_length=60)
    amount_micros = models.BigIntegerField(help_text="Micro-dollars: $10 = 10000000.")
    is_active = models.BooleanField(default=True)
    position = models.PositiveSmallIntegerField(default=0, help_text="Lower comes first.")

    class Meta:
        ordering = ["position", "amount_micros"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__gt=0), name="package_amount_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({display_usd(self.amount_micros)})"

    def clean(self) -> None:
        # Providers charge whole cents.
        if self.amount_micros is not None and self.amount_micros % MICROS_PER_CENT:
            raise ValidationError({"amount_micros": "Use a whole number of cents."})

    @property
    def amount_display(self) -> str:
        return display_usd(self.amount_micros)


class Provider(models.TextChoices):
    STRIPE = "stripe", "Stripe"
    TEST = "test", "Test mode"


class PurchaseStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    FULFILLED = "FULFILLED", "Paid"
    FAILED = "FAILED", "Failed"
    # Paid at the provider but not credited (amount mismatch, user gone): staff act.
    REVIEW = "REVIEW", "Needs review"


class Purchase(models.Model):
    """One attempt to buy credit. Fulfilled at most once, by a provider event."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="purchases"
    )
    user_email = models.EmailField(help_text="Kept for the books if the user is deleted.")
    package = models.ForeignKey(CreditPackage, null=True, blank=True, on_delete=models.SET_NULL)
    provider = models.CharField(max_length=16, choices=Provider.choices)
    amount_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(
        max_length=16, choices=PurchaseStatus.choices, default=PurchaseStatus.PENDING
    )
    status_note = models.CharField(max_length=255, blank=True)
    provider_session_id = models.CharField(max_length=255, blank=True, db_index=True)
    provider_payment_id = models.CharField(
        max_length=255, blank=True, db_index=True, help_text="Stripe PaymentIntent id."
    )
    idempotency_key = models.CharField(max_length=100, unique=True)
    grant = models.OneToOneField(
        "credits.CreditGrant", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    refunded_micros = models.BigIntegerField(default=0)
    # Refunds since take-backs are recorded (credits.TakeBack, source "purchase:<id>") keep
    # their taken / pending / shortfall there (billing.purchases.refund_progress); this
    # column holds only the shortfall of refunds applied before, and is no longer written.
    refund_shortfall_micros = models.BigIntegerField(
        default=0, help_text="Shortfall of refunds applied before take-backs were recorded."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    fulfilled_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__gt=0), name="purchase_amount_positive"
            ),
            models.CheckConstraint(
                condition=Q(refunded_micros__gte=0) & Q(refunded_micros__lte=F("amount_micros")),
                name="purchase_refund_within_amount",
            ),
            models.UniqueConstraint(
                fields=["provider", "provider_session_id"],
                condition=~Q(provider_session_id=""),
                name="purchase_session_unique_per_provider",
            ),
        ]

    def __str__(self) -> str:
        return f"{display_usd(self.amount_micros)} via {self.provider} ({self.status})"

    @property
    def is_test(self) -> bool:
        return self.provider == Provider.TEST

    @property
    def amount_display(self) -> str:
        return display_usd(self.amount_micros)

    @property
    def refund_state(self) -> str:
        if self.refunded_micros == 0:
            return ""
        return "Refunded" if self.refunded_micros >= self.amount_micros else "Partly refunded"

    @property
    def receipt_reference(self) -> str:
        return self.provider_payment_id or self.provider_session_id

    @property
    def take_back_reference(self) -> str:
        """The source reference of the credit take-backs (refunds, disputes) of this purchase."""
        return f"purchase:{self.pk}"


class EventOutcome(models.TextChoices):
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored"
    # A refund for a payment not fulfilled yet: applied when the completion arrives.
    DEFERRED = "deferred", "Deferred"
    REJECTED = "rejected", "Rejected"
    # Verified but about a payment we cannot match (a dispute of an unknown charge): staff look.
    REVIEW = "review", "Needs review"


class PaymentEventQuerySet(models.QuerySet):
    def delete(self):
        raise PaymentEventKept("Payment events are the record of what providers sent; never deleted.")


class PaymentEventKept(Exception):
    """A payment event may not be deleted (on PostgreSQL a trigger refuses it too)."""


class PaymentEvent(models.Model):
    """Every verified event a provider sent, as received. `processed_at` empty:
    not processed yet (or processing failed and the provider will retry). What was
    received never changes and no event is deleted (billing/migrations/0004)."""

    provider = models.CharField(max_length=16, choices=Provider.choices)
    event_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=100)
    payload = models.JSONField()
    # The payment (PaymentIntent) or session this event is about, to find it again.
    object_reference = models.CharField(max_length=255, blank=True, db_index=True)
    purchase = models.ForeignKey(
        Purchase, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    received_at = models.DateTimeField(auto_now_add=True)
    deliveries = models.PositiveIntegerField(default=1)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=EventOutcome.choices, blank=True)
    note = models.CharField(max_length=255, blank=True)
    last_error = models.TextField(blank=True)

    objects = PaymentEventQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "event_id"], name="payment_event_unique_per_provider"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} {self.event_id}"

    def delete(self, *args, **kwargs):
        raise PaymentEventKept("Payment events are the record of what providers sent; never deleted.")
