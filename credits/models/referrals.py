"""Referrals: each user's code, who was referred by whom (attributed once, at sign-up),
the programme's terms as data, and the payment fingerprints billing tells credits about."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from credits.models.ledger import CreditGrant


class ReferralCondition(models.TextChoices):
    FIRST_PURCHASE = "FIRST_PURCHASE", "The referred user's first purchase"
    FIRST_TOKEN = "FIRST_TOKEN", "The referred user's first token"
    EMAIL_VERIFIED = "EMAIL_VERIFIED", "The referred user verified their email"


class ReferralProgram(models.Model):
    """The referral terms; the newest row is in force (no row: the REFERRAL_* settings).
    `is_active` is the kill switch: off, referrals are still attributed but earn nothing."""

    name = models.CharField(max_length=100, unique=True)
    is_active = models.BooleanField(default=True)
    condition = models.CharField(max_length=16, choices=ReferralCondition.choices,
                                 default=ReferralCondition.FIRST_PURCHASE)
    referrer_amount_micros = models.BigIntegerField()
    referred_amount_micros = models.BigIntegerField(help_text="The welcome bonus; 0: none.")
    expiry_days = models.PositiveIntegerField(null=True, blank=True,
                                              help_text="Empty: the grants never expire.")
    monthly_cap = models.PositiveIntegerField(
        default=10, help_text="Rewarded referrals per referrer per calendar month (0: no cap).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(referrer_amount_micros__gt=0),
                                   name="referral_referrer_amount_positive"),
            models.CheckConstraint(condition=Q(referred_amount_micros__gte=0),
                                   name="referral_referred_amount_not_negative"),
        ]

    def __str__(self) -> str:
        return self.name


class ReferralCode(models.Model):
    """A user's referral code (their link is the sign-up page with ?ref=<code>)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="referral_code")
    code = models.CharField(max_length=32, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.code


class ReferralStatus(models.TextChoices):
    PENDING = "PENDING", "Waiting for the condition"
    REWARDED = "REWARDED", "Rewarded"
    REFUSED = "REFUSED", "Refused"
    CLAWED_BACK = "CLAWED_BACK", "Clawed back"


class Referral(models.Model):
    """`referred` signed up through `referrer`'s link: one row per referred user, written
    once at sign-up; rewarded (both grants) at most once (credits.promotion.referrals)."""

    referrer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                 related_name="referrals_made")
    referred = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                    related_name="referral")
    code = models.CharField(max_length=32)
    program = models.ForeignKey(ReferralProgram, null=True, blank=True, on_delete=models.PROTECT,
                                related_name="referrals")
    status = models.CharField(max_length=16, choices=ReferralStatus.choices,
                              default=ReferralStatus.PENDING)
    refusal_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    referrer_grant = models.OneToOneField(CreditGrant, null=True, blank=True,
                                          on_delete=models.PROTECT, related_name="+")
    referred_grant = models.OneToOneField(CreditGrant, null=True, blank=True,
                                          on_delete=models.PROTECT, related_name="+")
    clawed_back_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                       on_delete=models.PROTECT, related_name="+")
    clawed_back_micros = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=~Q(referrer=F("referred")),
                                   name="referral_not_self"),
        ]
        indexes = [models.Index(fields=["referrer", "status", "decided_at"],
                                name="referral_referrer_status_idx")]

    def __str__(self) -> str:
        return f"{self.referrer_id} referred {self.referred_id} ({self.status})"


class PaymentFingerprint(models.Model):
    """A payment method's fingerprint a user paid with (told by billing's purchase signal):
    two accounts paying with one card are one person to the referral rules."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="payment_fingerprints")
    fingerprint = models.CharField(max_length=128, db_index=True)
    first_seen_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "fingerprint"],
                                               name="payment_fingerprint_once_per_user")]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.fingerprint[:8]}…"
