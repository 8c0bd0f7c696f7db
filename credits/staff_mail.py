"""Telling staff: one email to every active staff member with an address, and ADMINS."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail

from accounts.models import User

logger = logging.getLogger(__name__)


def email_staff(*, subject: str, body: str) -> bool:
    """Send `body` to active staff and ADMINS. Failures are logged, never raised (the
    callers are sweeps and awards that must go on); returns whether it was sent."""
    recipients = sorted(set(
        User.objects.filter(is_staff=True, is_active=True).exclude(email="")
        .values_list("email", flat=True)) | {email for _name, email in settings.ADMINS})
    if not recipients:
        return False
    try:
        send_mail(subject, body, None, recipients)
    except Exception:
        logger.exception("Could not email staff: %s", subject)
        return False
    return True
