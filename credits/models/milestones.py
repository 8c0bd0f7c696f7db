"""Tiered milestones as data: a promotion (or one of its A/B variants) names a tier list;
each tier has a trigger, an amount and an expiry rule. A tier is awarded at most once per
user and once per normalized email (TierAward's unique constraints), by
credits.promotion.milestones.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from credits.models.ledger import CreditGrant


class ExpiryRule(models.TextChoices):
    FIXED = "FIXED", "Fixed: expires N days after the grant"
    EXTENDED_WHILE_ACTIVE = "EXTENDED_WHILE_ACTIVE", (
        "Extended while active: each paid call pushes the expiry to N days after it, capped")


class TierTrigger(models.TextChoices):
    FIRST_TOKEN = "FIRST_TOKEN", "First token within the window after sign-up"
    TOKENS = "TOKENS", "Cumulative tokens within the window"
    SPEND = "SPEND", "Cumulative spend on calls within the window"
    FIRST_PURCHASE = "FIRST_PURCHASE", "First purchase (within the window, if any)"
    EMAIL_VERIFIED = "EMAIL_VERIFIED", "Email verified (within the window, if any)"


class TierList(models.Model):
    """An ordered list of milestones; promotions and variants choose one (A/B arms can
    play different lists). Edited by staff in the admin."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PromotionTier(models.Model):
    """One milestone: when `trigger` becomes true (inside `window_seconds` after sign-up,
    when set), the user is granted `amount_micros` (FIRST_PURCHASE with `match_percent`:
    that share of the purchase, up to `amount_micros`), expiring by `expiry_rule`."""

    tier_list = models.ForeignKey(TierList, on_delete=models.PROTECT, related_name="tiers")
    position = models.PositiveSmallIntegerField(help_text="1 comes first.")
    name = models.CharField(max_length=100, blank=True, help_text="Shown to users; empty: "
                            "described from the trigger.")
    trigger = models.CharField(max_length=16, choices=TierTrigger.choices)
    window_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Counted from sign-up. Empty: no deadline "
        "(FIRST_TOKEN: the promotion's window).")
    threshold = models.BigIntegerField(
        null=True, blank=True,
        help_text="TOKENS: tokens; SPEND: micro-dollars spent on calls. Unused otherwise.")
    amount_micros = models.BigIntegerField(help_text="Micro-dollars granted (or the match cap).")
    match_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="FIRST_PURCHASE only: grant this % of the purchase, "
        "up to the amount. Empty: the amount itself.")
    expiry_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: the promotion's expiry.")
    expiry_rule = models.CharField(max_length=24, choices=ExpiryRule.choices, blank=True,
                                   help_text="Empty: the promotion's rule.")

    class Meta:
        ordering = ["tier_list_id", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["tier_list", "position"], name="tier_position_unique"),
            models.UniqueConstraint(fields=["tier_list"], condition=Q(trigger="FIRST_TOKEN"),
                                    name="tier_one_first_token_per_list"),
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="tier_amount_positive"),
            models.CheckConstraint(
                condition=~Q(trigger__in=["TOKENS", "SPEND"]) | Q(threshold__gt=0),
                name="tier_cumulative_needs_threshold"),
            models.CheckConstraint(
                condition=Q(match_percent__isnull=True)
                | (Q(trigger="FIRST_PURCHASE") & Q(match_percent__gt=0)
                   & Q(match_percent__lte=1000)),
                name="tier_match_only_for_purchase"),
        ]

    def __str__(self) -> str:
        return f"{self.tier_list.name} #{self.position}: {self.get_trigger_display()}"


class TierAward(models.Model):
    """A tier was awarded: once per user and once per normalized email, ever (the two
    unique constraints are the guard under races), written with its grant."""

    tier = models.ForeignKey(PromotionTier, on_delete=models.PROTECT, related_name="awards")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                             related_name="tier_awards")
    email_normalized = models.CharField(max_length=254)
    grant = models.OneToOneField(CreditGrant, null=True, on_delete=models.PROTECT,
                                 related_name="tier_award")
    amount_micros = models.BigIntegerField()
    network = models.CharField(max_length=64, blank=True)
    # When the trigger became true in the ledger (e.g. the capture that crossed the
    # threshold); the grant itself is dated when it was written.
    triggered_at = models.DateTimeField()
    awarded_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-awarded_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["tier", "user"], name="tier_award_once_per_user"),
            models.UniqueConstraint(fields=["tier", "email_normalized"],
                                    name="tier_award_once_per_email"),
        ]

    def __str__(self) -> str:
        return f"Tier {self.tier_id} awarded to {self.user_id}"
