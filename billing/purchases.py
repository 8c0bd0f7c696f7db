"""Reads of purchases for the buyer's pages (the dashboard's receipts, the success page)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db.models import Sum

from accounts.models import User
from billing.models import Purchase
from credits.models import TakeBack

RECENT_PURCHASES = 20


def list_purchases(*, user: User, limit: int = RECENT_PURCHASES) -> list[Purchase]:
    """The user's purchases, newest first: the receipts on the dashboard."""
    return list(Purchase.objects.filter(user=user).order_by("-created_at")[:limit])


def get_purchase(*, user: User, purchase_id: uuid.UUID) -> Purchase | None:
    """The user's own purchase, or None (someone else's is as good as missing)."""
    return Purchase.objects.filter(user=user, pk=purchase_id).first()


@dataclass(frozen=True)
class RefundProgress:
    """How far the credit of a purchase's refunds and disputes was taken back: `taken`,
    `pending` (held by calls in flight, taken when they finish) and `shortfall` (spent)."""

    taken_micros: int
    pending_micros: int
    shortfall_micros: int

    @property
    def complete(self) -> bool:
        return self.pending_micros == 0


def refund_progress(*, purchase: Purchase) -> RefundProgress:
    """The purchase's take-backs summed (plus the shortfall of refunds from before they were
    recorded)."""
    sums = TakeBack.objects.filter(source_reference=purchase.take_back_reference).aggregate(
        taken=Sum("taken_micros"), pending=Sum("pending_micros"),
        shortfall=Sum("shortfall_micros"))
    return RefundProgress(
        taken_micros=sums["taken"] or 0,
        pending_micros=sums["pending"] or 0,
        shortfall_micros=(sums["shortfall"] or 0) + purchase.refund_shortfall_micros,
    )
