"""Promotions as data: which promotion and variant a user plays for, and its terms.

A new user is assigned, once, to the live first-token promotion and one of its
variants, drawn by weight. The draw hashes (promotion, user id), so it is
stable and reproducible, and the assignment row makes it sticky: editing the
weights later changes only who signs up next.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from credits import money
from credits.models import Promotion, PromotionAssignment, PromotionKind, PromotionVariant


@dataclass(frozen=True)
class PromotionTerms:
    amount_micros: int
    window_seconds: int
    expiry_days: int
    active: bool = True  # False: the kill switch is off, or no promotion was running
    promotion_id: int | None = None
    variant_id: int | None = None


def settings_terms() -> PromotionTerms:
    """The PROMOTION_* settings: the terms of users who have no assignment."""
    return PromotionTerms(
        amount_micros=money.usd_to_micros(str(settings.PROMOTION_AMOUNT_USD)),
        window_seconds=int(settings.PROMOTION_WINDOW_SECONDS),
        expiry_days=int(settings.PROMOTION_EXPIRY_DAYS),
    )


def terms_for(promotion: Promotion, variant: PromotionVariant | None) -> PromotionTerms:
    """A variant's terms; its empty fields fall back to the promotion's, and the
    promotion's to the PROMOTION_* settings."""
    defaults = settings_terms()

    def pick(field: str) -> int:
        for source in (variant, promotion):
            value = getattr(source, field, None) if source is not None else None
            if value is not None:
                return value
        return getattr(defaults, field)

    return PromotionTerms(
        amount_micros=pick("amount_micros"),
        window_seconds=pick("window_seconds"),
        expiry_days=pick("expiry_days"),
        active=promotion.is_active,
        promotion_id=promotion.pk,
        variant_id=variant.pk if variant is not None else None,
    )


def user_promotion_terms(user: User) -> PromotionTerms:
    """The first-token terms `user` plays for (one query)."""
    assignment = (
        PromotionAssignment.objects.select_related("promotion", "variant")
        .filter(user_id=user.pk)
        .first()
    )
    if assignment is None:
        return settings_terms()
    if assignment.promotion is None or assignment.promotion.kind != PromotionKind.FIRST_TOKEN:
        return PromotionTerms(
            amount_micros=0, window_seconds=0, expiry_days=0, active=False,
            promotion_id=assignment.promotion_id, variant_id=assignment.variant_id,
        )
    return terms_for(assignment.promotion, assignment.variant)


def live_promotion(*, now: dt.datetime | None = None) -> Promotion | None:
    """The first-token promotion new sign-ups join now: active and in its dates."""
    now = now or timezone.now()
    return (
        Promotion.objects.filter(kind=PromotionKind.FIRST_TOKEN, is_active=True,
                                 active_from__lte=now)
        .filter(Q(active_to__isnull=True) | Q(active_to__gt=now))
        .order_by("-active_from", "-id")
        .first()
    )


def pick_variant(*, promotion: Promotion, user_id: int) -> PromotionVariant | None:
    """A variant drawn by weight, deterministically from (promotion, user id)."""
    variants = list(promotion.variants.order_by("id"))
    total = sum(v.weight for v in variants)
    if total <= 0:
        return None
    digest = hashlib.sha256(f"promotion:{promotion.pk}:user:{user_id}".encode()).digest()
    ticket = int.from_bytes(digest[:8], "big") % total
    for variant in variants:
        if ticket < variant.weight:
            return variant
        ticket -= variant.weight
    return variants[-1]  # unreachable: the tickets add up to `total`


def assign_promotion(
    *, user: User, now: dt.datetime | None = None
) -> PromotionAssignment | None:
    """Assign `user` to the live first-token promotion and a variant, once.

    Sticky: a second call returns the existing assignment unchanged. When
    promotions exist but none is live (ended, or switched off), the assignment
    names none and the user earns nothing. With no promotion rows at all (a
    fresh database) nobody is assigned and the PROMOTION_* settings apply.
    """
    existing = PromotionAssignment.objects.filter(user_id=user.pk).first()
    if existing is not None:
        return existing
    now = now or timezone.now()
    promotion = live_promotion(now=now)
    if promotion is None and not Promotion.objects.exists():
        return None
    variant = pick_variant(promotion=promotion, user_id=user.pk) if promotion else None
    try:
        with transaction.atomic():
            return PromotionAssignment.objects.create(
                user_id=user.pk, promotion=promotion, variant=variant, assigned_at=now
            )
    except IntegrityError:  # assigned concurrently: the first one stands
        return PromotionAssignment.objects.get(user_id=user.pk)


def eligible_now_q(*, now: dt.datetime | None = None) -> Q:
    """A filter on User: could still earn the first-token promotion now (the flags,
    inside their own variant's window, and that promotion not switched off)."""
    now = now or timezone.now()

    def joined_within(seconds: int) -> Q:
        return Q(date_joined__gte=now - dt.timedelta(seconds=seconds))

    reachable = Q(promotion_assignment__isnull=True) & joined_within(
        settings_terms().window_seconds)
    live = Promotion.objects.filter(is_active=True, kind=PromotionKind.FIRST_TOKEN)
    for promotion in live.prefetch_related("variants"):
        reachable |= Q(promotion_assignment__promotion_id=promotion.pk,
                       promotion_assignment__variant__isnull=True) & joined_within(
            terms_for(promotion, None).window_seconds)
        for variant in promotion.variants.all():
            reachable |= Q(promotion_assignment__variant_id=variant.pk) & joined_within(
                terms_for(promotion, variant).window_seconds)
    return Q(promotion_eligible=True, promotion_claimed=False,
             first_token_at__isnull=True) & reachable


def deactivate_promotion(*, promotion: Promotion) -> Promotion:
    """The kill switch: no new awards from now on; awarded credit is untouched."""
    Promotion.objects.filter(pk=promotion.pk).update(is_active=False)
    promotion.refresh_from_db(fields=["is_active"])
    return promotion


def reactivate_promotion(*, promotion: Promotion) -> Promotion:
    """Undo the kill switch: awards resume for users still inside their window."""
    Promotion.objects.filter(pk=promotion.pk).update(is_active=True)
    promotion.refresh_from_db(fields=["is_active"])
    return promotion
