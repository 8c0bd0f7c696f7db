"""Login brute force (django-axes, settings AXES_*): after LOGIN_FAILURE_LIMIT wrong passwords for
one account from one address, that account cannot log in from that address, on the web login or
the admin's, for LOGIN_LOCKOUT_MINUTES after the last failure.

Axes counts per (account, address) pair: a stranger cannot lock a customer out of their own
account from elsewhere. Addresses come from accounts.network.client_ip, so X-Forwarded-For is
believed only from TRUSTED_PROXIES; accounts are the email as the login form normalizes it.
"""

from __future__ import annotations

from django.conf import settings
from django.shortcuts import render

from accounts.models import User


def login_username(request, credentials: dict | None) -> str:
    """The account a login attempt names: the email, normalized as accounts are stored, so
    "Lin@Example.com" and "lin@example.com" share one count."""
    raw = (credentials or {}).get("username")
    if raw is None:
        raw = request.POST.get("username", "")
    return User.objects.normalize_email(str(raw).strip()).lower()


def lockout_minutes() -> int:
    return int(settings.LOGIN_LOCKOUT_MINUTES)


def lockout_message() -> str:
    minutes = lockout_minutes()
    return (f"Too many failed log-in attempts for this account from your address. Logging in is "
            f"paused for {minutes} minute{'s' if minutes != 1 else ''}; try again after that.")


def lockout_response(request, original_response=None, credentials: dict | None = None):
    """A 429 page that says what happened and when to come back (the admin's or the site's)."""
    admin_login = request.path.startswith("/admin/")
    template = "admin/locked_out.html" if admin_login else "registration/locked_out.html"
    response = render(request, template, {"title": "Log-in paused", "message": lockout_message()},
                      status=429)
    response["Retry-After"] = str(lockout_minutes() * 60)
    return response
