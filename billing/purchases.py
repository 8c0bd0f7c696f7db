"""Reads of purchases for the buyer's pages (the dashboard's receipts, the success page)."""

from __future__ import annotations

import uuid

from accounts.models import User
from billing.models import Purchase

RECENT_PURCHASES = 20


def list_purchases(*, user: User, limit: int = RECENT_PURCHASES) -> list[Purchase]:
    """The user's purchases, newest first: the receipts on the dashboard."""
    return list(Purchase.objects.filter(user=user).order_by("-created_at")[:limit])


def get_purchase(*, user: User, purchase_id: uuid.UUID) -> Purchase | None:
    """The user's own purchase, or None (someone else's is as good as missing)."""
    return Purchase.objects.filter(user=user, pk=purchase_id).first()
