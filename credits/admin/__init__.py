"""The credit console (Django admin), one module per concern; importing this package
registers every credits admin, the User and ApiKey admins included.

toolkit: the shared pieces (read-only admins, money columns, user filter, CSV export);
ledger: entries, grants, holds, notifications; money_actions: the staff money actions and
their audit; promotions: promotions, variants, assignments, metrics; abuse: the sign-up
credit's abuse controls; customers: users and API keys; reconciliation: the nightly
reconciliation's runs and mismatches.
"""

from django.contrib import admin as _admin

from credits.admin import (  # noqa: F401  (registers the admins)
    abuse,
    customers,
    ledger,
    milestones,
    money_actions,
    promotions,
    reconciliation,
)

# The console says what it is (the default "Django administration" does not).
_admin.site.site_header = "TokenBank credit console"
_admin.site.site_title = "TokenBank console"
_admin.site.index_title = "Customers, credit and promotions"
