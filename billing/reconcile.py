"""credits_verify's check of the purchases (settings.LEDGER_RECONCILERS): every credited
payment has its grant, of its amount, and no purchased credit came from nowhere."""

from __future__ import annotations

from billing.models import Purchase
from credits.models import CreditGrant, GrantKind


def purchases_match_grants() -> list[str]:
    problems = []
    paid_grants = set()
    for purchase in Purchase.objects.filter(grant__isnull=False).select_related("grant").iterator():
        grant = purchase.grant
        paid_grants.add(grant.pk)
        if (grant.kind, grant.amount_micros, grant.user_id) != (
                GrantKind.PURCHASED, purchase.amount_micros, purchase.user_id):
            problems.append(
                f"user {purchase.user_id}: purchase {purchase.pk} of {purchase.amount_micros} "
                f"micros is credited by grant #{grant.pk} ({grant.kind}, {grant.amount_micros} "
                f"micros, user {grant.user_id})")
    # A grant that says it credits a purchase (billing.services sets "purchase:<id>") must be
    # that purchase's grant. (Staff may also grant credit of the purchased kind: audited as
    # staff actions, not payments.)
    for grant_id, user_id, amount, reference in CreditGrant.objects.filter(
            source_reference__startswith="purchase:").exclude(pk__in=paid_grants).values_list(
            "pk", "user_id", "amount_micros", "source_reference").iterator():
        problems.append(f"user {user_id}: grant #{grant_id} of {amount} micros says it credits "
                        f"{reference}, which is not credited by it")
    return problems
