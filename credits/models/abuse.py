"""Abuse controls of the sign-up credit: domain rules, sign-ups, claims and reviews."""


from django.conf import settings
from django.db import models

from credits.models.ledger import CreditGrant


class DomainRuleAction(models.TextChoices):
    BLOCK = "BLOCK", "Block (refuse sign-ups)"
    ALLOW = "ALLOW", "Allow (overrides the disposable-domains list)"


class EmailDomainRule(models.Model):
    """Staff's own verdict on an email domain; it also covers its subdomains.
    An ALLOW beats the packaged disposable-domains list and any BLOCK."""

    domain = models.CharField(max_length=253, unique=True, help_text="e.g. example.com (lowercase).")
    action = models.CharField(max_length=8, choices=DomainRuleAction.choices)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.domain}"

    def save(self, *args, **kwargs):
        self.domain = self.domain.strip().lower().lstrip("@").rstrip(".")
        super().save(*args, **kwargs)


class SignupRecord(models.Model):
    """One sign-up: where it came from. The velocity limits count these rows, so the
    counters are shared by every process and survive restarts."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="signup_records",
    )
    email_normalized = models.CharField(max_length=254)
    ip = models.GenericIPAddressField(null=True, blank=True)
    network = models.CharField(max_length=64, blank=True, help_text="/24 (IPv4) or /64 (IPv6).")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["ip", "created_at"], name="signup_ip_recent_idx"),
            models.Index(fields=["network", "created_at"], name="signup_network_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"Sign-up of {self.email_normalized} from {self.ip or 'unknown'}"


class PromotionClaim(models.Model):
    """The sign-up credit was given to this normalized email address: at most once,
    ever (unique; kept when the account goes). Written with the grant, in its
    transaction; the spend caps and the per-network limit sum these rows."""

    email_normalized = models.CharField(max_length=254, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    amount_micros = models.BigIntegerField()
    network = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-claimed_at", "-id"]
        indexes = [models.Index(fields=["network", "claimed_at"], name="claim_network_recent_idx")]

    def __str__(self) -> str:
        return f"Sign-up credit claimed by {self.email_normalized}"


class ReviewStatus(models.TextChoices):
    FLAGGED = "FLAGGED", "Flagged for review"
    CONFIRMED = "CONFIRMED", "Confirmed"
    CLAWED_BACK = "CLAWED_BACK", "Clawed back"


class PromotionReview(models.Model):
    """A sign-up credit that tripped a soft signal (credits.promotion.messages.SOFT_SIGNALS), for staff
    to confirm or claw back. Decided once, through credits.promotion.review."""

    grant = models.OneToOneField(CreditGrant, on_delete=models.PROTECT, related_name="review")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="promotion_reviews"
    )
    signals = models.CharField(max_length=255, help_text="Comma-separated signal codes.")
    details = models.CharField(max_length=500, blank=True)
    status = models.CharField(max_length=16, choices=ReviewStatus.choices,
                              default=ReviewStatus.FLAGGED)
    created_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=255, blank=True)
    clawed_back_micros = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="review_status_idx")]

    def __str__(self) -> str:
        return f"Review of grant #{self.grant_id} ({self.status})"
