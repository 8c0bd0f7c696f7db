import datetime as dt

import pytest
from django.utils import timezone

from credits.models import Promotion, PromotionTier, PromotionVariant, TierList

# The promotion rooms' abuse settings and sign-up helpers serve these tests too.
from tests.billing.conftest import demo_models, packages, test_provider  # noqa: F401
from tests.books import USD
from tests.credits.promotion.conftest import _abuse_settings, register  # noqa: F401


@pytest.fixture
def ladder(db):
    """A live tiered promotion: tier 1 first token in 180 s ($20), tier 2 100,000 tokens in
    7 days ($5), tier 3 $1 of calls in 7 days ($3), tier 4 first purchase in 30 days (50 %
    match up to $10), tier 5 email verified in 1 day ($2)."""
    Promotion.objects.update(is_active=False)
    tiers = TierList.objects.create(name="Ladder")
    for position, trigger, window, threshold, amount, match in [
        (1, "FIRST_TOKEN", 180, None, 20, None),
        (2, "TOKENS", 7 * 86400, 100_000, 5, None),
        (3, "SPEND", 7 * 86400, 1 * USD, 3, None),
        (4, "FIRST_PURCHASE", 30 * 86400, None, 10, 50),
        (5, "EMAIL_VERIFIED", 86400, None, 2, None),
    ]:
        PromotionTier.objects.create(tier_list=tiers, position=position, trigger=trigger,
                                     window_seconds=window, threshold=threshold,
                                     amount_micros=amount * USD, match_percent=match)
    promotion = Promotion.objects.create(
        name="Tiered", kind="TIERED", active_from=timezone.now() - dt.timedelta(days=1),
        tier_list=tiers, expiry_days=30)
    PromotionVariant.objects.create(promotion=promotion, name="default", weight=1)
    return promotion


def tier(promotion, position: int) -> PromotionTier:
    return PromotionTier.objects.get(tier_list=promotion.tier_list, position=position)
