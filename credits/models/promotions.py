"""Promotions as data: first-token offers, their A/B variants, who plays for which, and
the terms a user plays for (read by the ledger's holds and by credits.promotion)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from credits import money
from credits.models.milestones import ExpiryRule, PromotionTier, TierTrigger

# The first-token grant's idempotency key: unique per user, so it is awarded once.
FIRST_TOKEN_PROMOTION_KEY = "promotion:first-token"


class PromotionKind(models.TextChoices):
    FIRST_TOKEN = "FIRST_TOKEN", "First token"
    REFERRAL = "REFERRAL", "Referral"
    TIERED = "TIERED", "Tiered"


class Promotion(models.Model):
    """A promotion's terms. New sign-ups are assigned a live promotion (one variant,
    stickily); `is_active` is the kill switch: off, nobody earns it any more, and
    credit already awarded is left alone."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(
        max_length=16, choices=PromotionKind.choices, default=PromotionKind.FIRST_TOKEN
    )
    is_active = models.BooleanField(
        default=True, help_text="Kill switch: untick to stop new awards at once."
    )
    active_from = models.DateTimeField(help_text="Sign-ups from this moment are assigned to it.")
    active_to = models.DateTimeField(
        null=True, blank=True, help_text="Empty: no end. Sign-ups after it are not assigned."
    )
    # Empty terms follow the PROMOTION_* settings (the default promotion starts so).
    amount_micros = models.BigIntegerField(
        null=True, blank=True, help_text="Micro-dollars awarded. Empty: PROMOTION_AMOUNT_USD."
    )
    window_seconds = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="The first token must come this soon after registering. "
        "Empty: PROMOTION_WINDOW_SECONDS.",
    )
    expiry_days = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="The awarded credit expires after this. Empty: PROMOTION_EXPIRY_DAYS.",
    )
    # Expiry policy as data: FIXED (expiry_days after the grant, today's rule) or
    # EXTENDED_WHILE_ACTIVE (each paid call pushes the expiry to extension_days after it,
    # never past expiry_cap_days after the grant).
    expiry_rule = models.CharField(max_length=24, default=ExpiryRule.FIXED,
                                   choices=ExpiryRule.choices)
    extension_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Extended while active: days after the last paid "
        "call. Empty: the expiry days.")
    expiry_cap_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Extended while active: never later than this many "
        "days after the grant. Empty: PROMOTION_EXPIRY_CAP_DAYS.")
    # The milestones after (or instead of) the first token; a variant may choose another.
    tier_list = models.ForeignKey("TierList", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="promotions",
                                  help_text="Empty: the first token is the only milestone.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when a spend cap (credits.promotion.award) switched it off; staff are told once.
    paused_reason = models.CharField(max_length=255, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-active_from", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__isnull=True) | Q(amount_micros__gt=0),
                name="promotion_amount_positive",
            ),
            models.CheckConstraint(
                condition=Q(active_to__isnull=True) | Q(active_to__gt=F("active_from")),
                name="promotion_ends_after_it_starts",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class PromotionVariant(models.Model):
    """An A/B arm of a promotion; empty terms fall back to the promotion's."""

    promotion = models.ForeignKey(Promotion, on_delete=models.PROTECT, related_name="variants")
    name = models.CharField(max_length=50)
    weight = models.PositiveIntegerField(
        default=1,
        help_text="Share of sign-ups: weight / sum of the promotion's weights (0: none now).",
    )
    amount_micros = models.BigIntegerField(null=True, blank=True)
    window_seconds = models.PositiveIntegerField(null=True, blank=True)
    expiry_days = models.PositiveIntegerField(null=True, blank=True)
    tier_list = models.ForeignKey("TierList", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="variants",
                                  help_text="Empty: the promotion's tier list.")

    class Meta:
        ordering = ["promotion_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["promotion", "name"], name="variant_name_unique"),
            models.CheckConstraint(
                condition=Q(amount_micros__isnull=True) | Q(amount_micros__gt=0),
                name="variant_amount_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.promotion.name} / {self.name}"


class PromotionAssignment(models.Model):
    """Which promotion (and variant) a user plays for; written once at sign-up.

    `promotion` is empty when no promotion was running when they signed up."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="promotion_assignment"
    )
    promotion = models.ForeignKey(
        Promotion, null=True, blank=True, on_delete=models.PROTECT, related_name="assignments"
    )
    variant = models.ForeignKey(
        PromotionVariant, null=True, blank=True, on_delete=models.PROTECT,
        related_name="assignments",
    )
    assigned_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.user_id} -> {self.variant or self.promotion or 'no promotion'}"


# --- the terms a user plays for ------------------------------------------------------


@dataclass(frozen=True)
class PromotionTerms:
    amount_micros: int
    window_seconds: int
    expiry_days: int
    active: bool = True  # False: the kill switch is off, or no promotion was running
    promotion_id: int | None = None
    variant_id: int | None = None
    tier_list_id: int | None = None  # the milestones beyond the first token (none: only it)
    expiry_rule: str = "FIXED"
    extension_days: int | None = None
    expiry_cap_days: int | None = None

    def deadline_for(self, user) -> dt.datetime:
        """The end of `user`'s first-token window (inclusive)."""
        return user.date_joined + dt.timedelta(seconds=self.window_seconds)

    def open_to(self, user, *, now: dt.datetime) -> bool:
        """Could `user` still earn it with a first token at `now`: the offer is on, the
        user has not had a first token, was not refused it, and is inside the window."""
        return (self.active and not user.promotion_claimed and user.promotion_eligible
                and user.first_token_at is None and now <= self.deadline_for(user))


def settings_terms() -> PromotionTerms:
    """The PROMOTION_* settings: the terms of users who have no assignment."""
    return PromotionTerms(
        amount_micros=money.usd_to_micros(str(settings.PROMOTION_AMOUNT_USD)),
        window_seconds=int(settings.PROMOTION_WINDOW_SECONDS),
        expiry_days=int(settings.PROMOTION_EXPIRY_DAYS),
    )


SIGNUP_PROMOTION_KINDS = (PromotionKind.FIRST_TOKEN, PromotionKind.TIERED)


def tier_list_id_of(promotion: Promotion | None, variant: PromotionVariant | None) -> int | None:
    """The tier list a variant plays: its own, else its promotion's."""
    if variant is not None and variant.tier_list_id is not None:
        return variant.tier_list_id
    return promotion.tier_list_id if promotion is not None else None


def terms_for(promotion: Promotion, variant: PromotionVariant | None) -> PromotionTerms:
    """A variant's terms; its empty fields fall back to the promotion's, and the
    promotion's to the PROMOTION_* settings. When the variant plays a tier list, its
    FIRST_TOKEN tier (if any) sets the first-token amount, window and expiry; a list
    without one offers no first-token credit."""
    defaults = settings_terms()
    tier_list_id = tier_list_id_of(promotion, variant)
    policy = dict(tier_list_id=tier_list_id, expiry_rule=promotion.expiry_rule,
                  extension_days=promotion.extension_days,
                  expiry_cap_days=promotion.expiry_cap_days)
    if tier_list_id is not None:
        tier = PromotionTier.objects.filter(tier_list_id=tier_list_id,
                                            trigger=TierTrigger.FIRST_TOKEN).first()
        if tier is None:
            return PromotionTerms(amount_micros=0, window_seconds=0, expiry_days=0,
                                  active=promotion.is_active, promotion_id=promotion.pk,
                                  variant_id=variant.pk if variant is not None else None,
                                  **policy)
        fallback = terms_for_fields(promotion, variant, defaults)
        if tier.expiry_rule:
            policy["expiry_rule"] = tier.expiry_rule
        return PromotionTerms(
            amount_micros=tier.amount_micros,
            window_seconds=tier.window_seconds if tier.window_seconds is not None
            else fallback["window_seconds"],
            expiry_days=tier.expiry_days if tier.expiry_days is not None
            else fallback["expiry_days"],
            active=promotion.is_active, promotion_id=promotion.pk,
            variant_id=variant.pk if variant is not None else None, **policy)
    fields = terms_for_fields(promotion, variant, defaults)
    return PromotionTerms(
        **fields, active=promotion.is_active, promotion_id=promotion.pk,
        variant_id=variant.pk if variant is not None else None, **policy)


def terms_for_fields(promotion: Promotion, variant: PromotionVariant | None,
                     defaults: PromotionTerms) -> dict:

    def pick(field: str) -> int:
        for source in (variant, promotion):
            value = getattr(source, field, None) if source is not None else None
            if value is not None:
                return value
        return getattr(defaults, field)

    return {"amount_micros": pick("amount_micros"), "window_seconds": pick("window_seconds"),
            "expiry_days": pick("expiry_days")}


def user_promotion_terms(user) -> PromotionTerms:
    """The first-token terms `user` plays for (one query)."""
    assignment = (
        PromotionAssignment.objects.select_related("promotion", "variant")
        .filter(user_id=user.pk)
        .first()
    )
    if assignment is None:
        return settings_terms()
    if assignment.promotion is None or assignment.promotion.kind not in SIGNUP_PROMOTION_KINDS:
        return PromotionTerms(
            amount_micros=0, window_seconds=0, expiry_days=0, active=False,
            promotion_id=assignment.promotion_id, variant_id=assignment.variant_id,
        )
    return terms_for(assignment.promotion, assignment.variant)
