"""{% purchase_receipts %}: the signed-in user's purchases (templates/billing/_purchases.html)."""

from django import template

from billing.purchases import list_purchases

register = template.Library()


@register.inclusion_tag("billing/_purchases.html", takes_context=True)
def purchase_receipts(context) -> dict:
    user = context["request"].user
    return {"purchases": list_purchases(user=user) if user.is_authenticated else []}
