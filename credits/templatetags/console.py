"""The credit console's front page numbers (templates/admin/index.html): a door over the
metrics selector and the pending staff actions."""

from django import template
from django.utils import timezone

from credits.admin.toolkit import usd
from credits.models import StaffAction
from credits.promotion import metrics

register = template.Library()


@register.simple_tag(takes_context=True)
def console_today(context) -> dict:
    """Today's (UTC) sign-ups, first tokens in window, promotional credit outstanding, and
    the staff actions waiting for an approver (for those who may see them)."""
    user = context["request"].user
    now = timezone.now()
    numbers = {"as_of": now}
    if user.has_perm("credits.view_promotion"):
        day = metrics.today(now=now)
        numbers.update(signups=day.signups, first_tokens=day.first_tokens_in_window,
                       outstanding=usd(day.promotional_outstanding_micros))
    if user.has_perm("credits.view_staffaction"):
        numbers["pending"] = StaffAction.objects.pending().count()
    return numbers
