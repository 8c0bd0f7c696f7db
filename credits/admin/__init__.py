"""The credit console (Django admin), one module per concern; importing this package
registers every credits admin, the User and ApiKey admins included."""

from credits.admin import abuse, console, customers  # noqa: F401  (registers the admins)
