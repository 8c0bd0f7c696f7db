"""Payment providers behind one small interface.

A provider opens a checkout for a Purchase and says where to send the buyer.
Payments are confirmed later by an event (a Stripe webhook, or the test page),
which billing.services handles the same way for both.

- `stripe`: a Stripe Checkout Session; events arrive signed at /billing/webhooks/stripe/.
- `test`: the embedded default when no Stripe keys are set (and PAYMENTS_TEST_MODE,
  which defaults to DEBUG, allows it); a local TEST MODE page.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import stripe
from django.conf import settings
from django.urls import reverse

from billing.models import MICROS_PER_CENT, Provider
from credits.money import display_usd

if TYPE_CHECKING:
    from billing.models import Purchase

# How old a signed webhook may be (seconds), as Stripe's own libraries default.
WEBHOOK_TOLERANCE_SECONDS = 300


class ProviderError(Exception):
    """The provider could not open a checkout (network, configuration)."""


class InvalidSignature(Exception):
    """A webhook whose signature is missing, malformed or wrong."""


@dataclass(frozen=True)
class Checkout:
    session_id: str
    redirect_url: str


class PaymentProvider(Protocol):
    name: str

    def create_checkout(
        self, *, purchase: Purchase, success_url: str, cancel_url: str
    ) -> Checkout: ...


def micros_to_cents(amount_micros: int) -> int:
    cents, rest = divmod(amount_micros, MICROS_PER_CENT)
    if rest:
        raise ValueError(f"{amount_micros} micro-dollars is not a whole number of cents")
    return cents


class StripeProvider:
    name = Provider.STRIPE

    def __init__(self, *, secret_key: str, webhook_secret: str):
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret

    def checkout_params(self, *, purchase: Purchase, success_url: str, cancel_url: str) -> dict:
        """What we ask Stripe for: one line of credit, tied to the purchase and the user."""
        reference = {"purchase_id": str(purchase.pk), "user_id": str(purchase.user_id)}
        return {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": purchase.currency,
                        "unit_amount": micros_to_cents(purchase.amount_micros),
                        "product_data": {
                            "name": f"TokenBank credit {display_usd(purchase.amount_micros)}"
                        },
                    },
                }
            ],
            "client_reference_id": str(purchase.pk),
            "customer_email": purchase.user_email,
            "metadata": reference,
            "payment_intent_data": {"metadata": reference},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }

    def create_checkout(self, *, purchase: Purchase, success_url: str, cancel_url: str) -> Checkout:
        # Exercised only with real keys; the tests cover checkout_params.
        client = stripe.StripeClient(self.secret_key)
        try:
            session = client.v1.checkout.sessions.create(
                params=self.checkout_params(
                    purchase=purchase, success_url=success_url, cancel_url=cancel_url
                ),
                options={"idempotency_key": purchase.idempotency_key},
            )
        except stripe.StripeError as exc:
            raise ProviderError(str(exc)) from exc
        return Checkout(session_id=session.id, redirect_url=session.url)

    def verify_event(self, *, payload: bytes, signature: str | None) -> dict:
        """The event as a plain dict, if Stripe signed it with our webhook secret."""
        if not self.webhook_secret or not signature:
            raise InvalidSignature("missing signature or webhook secret")
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature, self.webhook_secret, WEBHOOK_TOLERANCE_SECONDS
            )
            event = json.loads(payload)
        except (stripe.SignatureVerificationError, ValueError) as exc:
            raise InvalidSignature(str(exc)) from exc
        if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
            raise InvalidSignature("signed payload is not an event")
        return event


class TestProvider:
    """Takes no money: the buyer confirms or declines on a local TEST MODE page."""

    __test__ = False  # not a pytest class
    name = Provider.TEST

    def create_checkout(self, *, purchase: Purchase, success_url: str, cancel_url: str) -> Checkout:
        return Checkout(
            session_id=f"cs_test_{uuid.uuid4().hex}",
            redirect_url=reverse("billing:checkout_test", args=[purchase.pk]),
        )

    @staticmethod
    def event(*, purchase: Purchase, paid: bool) -> dict:
        """A Stripe-shaped event for the test page's answer, so one code path handles both."""
        session = {
            "object": "checkout.session",
            "id": purchase.provider_session_id,
            "client_reference_id": str(purchase.pk),
            "amount_total": micros_to_cents(purchase.amount_micros),
            "currency": purchase.currency,
            "payment_status": "paid" if paid else "unpaid",
            "payment_intent": f"pi_test_{purchase.pk.hex}",
            "metadata": {"purchase_id": str(purchase.pk), "user_id": str(purchase.user_id)},
        }
        return {
            "id": f"evt_test_{uuid.uuid4().hex}",
            "object": "event",
            "type": "checkout.session.completed" if paid else "checkout.session.async_payment_failed",
            "livemode": False,
            "data": {"object": session},
        }


    @staticmethod
    def refund_event(*, purchase: Purchase, refunded_total_micros: int) -> dict:
        """A Stripe-shaped charge.refunded for a test purchase (staff try refunds locally)."""
        charge = {
            "object": "charge",
            "id": f"ch_test_{purchase.pk.hex}",
            "amount": micros_to_cents(purchase.amount_micros),
            "amount_refunded": micros_to_cents(refunded_total_micros),
            "currency": purchase.currency,
            "payment_intent": purchase.provider_payment_id,
            "metadata": {"purchase_id": str(purchase.pk)},
        }
        return {
            "id": f"evt_test_{uuid.uuid4().hex}",
            "object": "event",
            "type": "charge.refunded",
            "livemode": False,
            "data": {"object": charge},
        }


def stripe_provider() -> StripeProvider:
    return StripeProvider(
        secret_key=settings.STRIPE_SECRET_KEY, webhook_secret=settings.STRIPE_WEBHOOK_SECRET
    )


def get_provider() -> StripeProvider | TestProvider:
    """Stripe when its secret key is set, otherwise the embedded test provider if
    PAYMENTS_TEST_MODE allows it (it credits without payment). Raises ProviderError."""
    if settings.STRIPE_SECRET_KEY:
        return stripe_provider()
    if settings.PAYMENTS_TEST_MODE:
        return TestProvider()
    raise ProviderError("No payment provider is configured (set STRIPE_SECRET_KEY).")


def in_test_mode() -> bool:
    return not settings.STRIPE_SECRET_KEY and bool(settings.PAYMENTS_TEST_MODE)
