"""The credit console (Django admin), one module per concern; importing this package
registers every credits admin, the User and ApiKey admins included.

toolkit: the shared pieces (read-only admins, money columns, user filter, CSV export);
ledger: entries, grants, holds, notifications; money_actions: the staff money actions and
their audit; promotions: promotions, variants, assignments, metrics; abuse: the sign-up
credit's abuse controls; customers: users and API keys.
"""

from credits.admin import (  # noqa: F401  (registers the admins)
    abuse,
    customers,
    ledger,
    milestones,
    money_actions,
    promotions,
)
