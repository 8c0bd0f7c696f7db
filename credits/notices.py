"""When the ledger's changes deserve a notice, and how one is queued.

The ledger's writer asks `notice_for_spend` on every spend (no query) and the award
queues the promotion notice; both go through `enqueue_notice`, which only schedules an
enqueue for after the commit (`credits.notifications.notify` decides and sends). The
notifications and the dashboard read the same low-balance threshold, so they never
disagree about what "low" means.
"""

from __future__ import annotations

from django.conf import settings

from config.queue import enqueue_on_commit
from credits import money
from credits.models import EntryType, NotificationEvent

# Entry types that spend credit; an expiry alone does not send a balance notice
# (the "credits expired" one says it).
SPENDING_ENTRY_TYPES = frozenset({EntryType.USAGE, EntryType.CAPTURE, EntryType.ADJUSTMENT})


def low_balance_threshold_micros() -> int:
    """LOW_BALANCE_THRESHOLD_USD in micro-dollars."""
    return money.usd_to_micros(str(settings.LOW_BALANCE_THRESHOLD_USD))


def notice_for_spend(*, before_micros: int, after_micros: int) -> str | None:
    """The event a spend from `before` to `after` calls for: the balance reached zero,
    or crossed below the low-balance threshold; None otherwise."""
    if after_micros >= before_micros:
        return None
    if after_micros == 0:
        return NotificationEvent.BALANCE_EXHAUSTED
    if after_micros < low_balance_threshold_micros() <= before_micros:
        return NotificationEvent.LOW_BALANCE
    return None


def staff_event(*, kind: str, amount_micros: int = 0) -> str | None:
    """The notice a staff action of `kind` (a StaffActionKind value, or "CLAWBACK") sends the
    customer; None for actions that move no credit."""
    if kind == "ADJUST":
        return (NotificationEvent.CREDIT_ADDED if amount_micros > 0
                else NotificationEvent.CREDIT_REMOVED)
    return {
        "GRANT": NotificationEvent.CREDIT_ADDED,
        "REFUND": NotificationEvent.CREDIT_REFUNDED,
        "VOID": NotificationEvent.CREDIT_REMOVED,
        "CLAWBACK": NotificationEvent.CREDIT_REMOVED,
        "CHANGE_EXPIRY": NotificationEvent.EXPIRY_CHANGED,
        "EXPIRE_NOW": NotificationEvent.EXPIRY_CHANGED,
    }.get(kind)


def enqueue_staff_notice(*, user_id: int, kind: str, amount_micros: int = 0) -> None:
    """Queue the customer's notice of a staff change (after the commit; a dry run rolled
    back queues nothing)."""
    event = staff_event(kind=kind, amount_micros=amount_micros)
    if event is not None:
        enqueue_notice(user_id=user_id, event=event)


def enqueue_notice(*, user_id: int, event: str) -> None:
    """Queue `event` for the user once the transaction commits. If the broker is down it is
    logged and dropped: the periodic catch-up (credits.notifications.catch_up) sends it."""
    enqueue_on_commit("credits.tasks.send_notification", user_id, str(event),
                      describe=f"{event} notification for user {user_id}")
