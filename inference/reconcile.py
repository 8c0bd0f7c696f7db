"""credits_verify's check of the calls (settings.LEDGER_RECONCILERS): what the ledger
charged each call, by its request id, against the call's usage record."""

from __future__ import annotations

import re

from django.db.models import Sum

from credits.models import CreditHold, EntryType, HoldStatus, LedgerEntry
from inference.models import UsageRecord

# The API's request ids (inference.services.new_request_id): "chatcmpl-<32 hex>" and the like.
API_REQUEST_ID = re.compile(r"^[a-z]+-[0-9a-f]{32}$")


def charges_match_usage_records() -> list[str]:
    """Every usage record's cost == what the ledger charged that call (captures and
    late debits naming it); every captured hold of an API call has a usage record."""
    charged = {
        reference: -(total or 0)
        for reference, total in LedgerEntry.objects.filter(
            entry_type__in=[EntryType.CAPTURE, EntryType.USAGE]).exclude(reference="")
        .order_by().values_list("reference").annotate(total=Sum("amount_micros"))
    }
    problems = []
    recorded = set()
    for request_id, user_id, cost in UsageRecord.objects.values_list(
            "request_id", "user_id", "cost_micros").iterator():
        recorded.add(request_id)
        found = charged.get(request_id, 0)
        if found != cost:
            problems.append(f"user {user_id}: call {request_id}: its usage record says "
                            f"{cost} micros, the ledger charged {found}")
    for reference, user_id, captured in CreditHold.objects.filter(
            status=HoldStatus.CAPTURED, captured_micros__gt=0).values_list(
            "reference", "user_id", "captured_micros").iterator():
        if API_REQUEST_ID.match(reference) and reference not in recorded:
            problems.append(f"user {user_id}: call {reference} was charged {captured} micros "
                            "but has no usage record")
    return problems
