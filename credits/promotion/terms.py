"""Which promotion and variant a new user plays for, and the kill switch.

The terms themselves (PromotionTerms, `user_promotion_terms`) live with the promotion
models, because the ledger's holds read them too; they are re-exported here.

A new user is assigned, once, to the live first-token promotion and one of its
variants, drawn by weight. The draw hashes (promotion, user id), so it is
stable and reproducible, and the assignment row makes it sticky: editing the
weights later changes only who signs up next.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from credits.models import Promotion, PromotionAssignment, PromotionVariant
from credits.models.promotions import (  # noqa: F401  (the terms, re-exported)
    SIGNUP_PROMOTION_KINDS,
    PromotionTerms,
    settings_terms,
    terms_for,
    user_promotion_terms,
)


def live_promotion(*, now: dt.datetime | None = None) -> Promotion | None:
    """The first-token promotion new sign-ups join now: active and in its dates."""
    now = now or timezone.now()
    return (
        Promotion.objects.filter(kind__in=SIGNUP_PROMOTION_KINDS, is_active=True,
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
    live = Promotion.objects.filter(is_active=True, kind__in=SIGNUP_PROMOTION_KINDS)
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
