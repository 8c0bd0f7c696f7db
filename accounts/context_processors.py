"""Template context every page needs: the signed-in user's balance and promotion state."""

from django.utils import timezone

from credits.money import display_usd
from credits.selectors import promotion_status


def epoch_ms(moment) -> int:
    return int(moment.timestamp() * 1000)


def remaining_label(seconds: float) -> str:
    """"2:59" for 179.2 s (rounded up, as the page's countdown does)."""
    whole = max(0, int(-(-seconds // 1)))
    return f"{whole // 60}:{whole % 60:02d}"


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
        "promotion_remaining_label": remaining_label(promotion.seconds_remaining),
        "server_now_ms": epoch_ms(now),
        "nav_balance_display": display_usd(user.credit_balance),
    }
