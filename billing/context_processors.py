"""Template context every page needs: the signed-in user's balance and promotion state."""

from django.utils import timezone

from billing.labels import epoch_ms, minutes_seconds
from credits.money import display_usd, headline_usd
from credits.promotion.status import promotion_status


def web(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    now = timezone.now()
    # Read from the user row the auth middleware loaded: no extra query per page.
    promotion = promotion_status(user, now=now)
    return {
        "promotion": promotion,
        "promotion_deadline_ms": epoch_ms(promotion.deadline),
        "promotion_remaining_label": minutes_seconds(promotion.seconds_remaining),
        "server_now_ms": epoch_ms(now),
        "promotion_offer_display": display_usd(promotion.amount_micros, places=0),
        # A headline: dollars and cents rounded down, never more than there is.
        "nav_balance_display": headline_usd(user.credit_balance),
    }
