"""The Stripe webhook: verify the signature, hand the event to billing.services."""

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import services
from billing.models import Provider
from billing.providers import InvalidSignature, stripe_provider

logger = logging.getLogger(__name__)


@csrf_exempt  # authenticated by the Stripe-Signature header instead
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event = stripe_provider().verify_event(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
    except InvalidSignature as exc:
        logger.warning("Rejected a Stripe webhook: %s", exc)
        return JsonResponse({"error": "invalid signature"}, status=400)
    try:
        record = services.receive_event(provider=Provider.STRIPE, event=event)
    except Exception:
        # Nothing of it was written; a non-2xx makes Stripe deliver it again.
        logger.exception("Handling Stripe event %s failed", event.get("id"))
        return JsonResponse({"error": "processing failed; retry"}, status=500)
    return JsonResponse({"received": True, "outcome": record.outcome, "note": record.note})
