"""The credit ledger: the only code that writes grants, holds and entries.

Every service is one database transaction that locks the user's row first, then the
grants it touches in id order (`locks`), writes the entries and the cached totals
together (`writer`), and raises a `credits.exceptions` error with nothing written when
it refuses. Amounts are integers of micro-dollars; see `credits.money` for the rounding.

By concern: `grants` (add, spend, void, re-date, expire), `takebacks` (refunds, including
credit held by calls in flight), `holds` (authorize, capture, release, the journal of a
call in flight, the stale-hold sweep), `reconcile` (verify_balances), `pricing`.
The public names are re-exported here: callers import `credits.services.<name>`.
"""

from credits.services.grants import (
    DebitResult,
    ExpiryRun,
    add_credit,
    adjust_credit,
    change_grant_expiry,
    expire_credits,
    grant_locked,
    use_credits,
    void_grant,
)
from credits.services.holds import (
    HoldSweep,
    Settlement,
    SweptHold,
    authorize,
    back_pending_holds,
    capture,
    record_progress,
    release,
    release_stale_holds,
)
from credits.services.pricing import calculate_inference_cost, price_call, worst_case_cost
from credits.services.reconcile import Mismatch, verify_balances
from credits.services.results import UnitFailure
from credits.services.takebacks import (
    TakeBackResult,
    TakeBackReversal,
    reverse_take_back,
    take_back_credit,
)
from credits.services.writer import burn_down_order

__all__ = [
    "DebitResult", "ExpiryRun", "HoldSweep", "Mismatch", "Settlement", "SweptHold",
    "TakeBackResult", "TakeBackReversal", "UnitFailure", "add_credit", "adjust_credit",
    "authorize", "back_pending_holds", "burn_down_order", "calculate_inference_cost", "capture",
    "change_grant_expiry", "expire_credits", "grant_locked", "price_call", "record_progress",
    "release",
    "release_stale_holds", "reverse_take_back", "take_back_credit", "use_credits",
    "verify_balances", "void_grant", "worst_case_cost",
]
