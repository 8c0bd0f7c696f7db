import datetime as dt
import hashlib
import hmac
import json
import time
import uuid

import pytest
from django.utils import timezone

from accounts import services as account_services
from billing.models import Provider, Purchase
from inference.models import AiModel, UsageRecord
from tests.books import USD
from tests.seeds import seed_credit_packages, seed_demo_models

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
WEBHOOK_URL = "/billing/webhooks/stripe/"


def stripe_signature(payload: str, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header exactly as Stripe builds it."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


@pytest.fixture
def packages(db):
    """The seeded packages, re-seeded if a transactional test flushed them."""
    seed_credit_packages()


@pytest.fixture
def demo_models(db):
    """The seeded demo models and prices, re-seeded if a transactional test flushed them."""
    seed_demo_models()


@pytest.fixture
def stripe_keys(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_not_used_no_network"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return settings


@pytest.fixture
def test_provider(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = ""
    settings.PAYMENTS_TEST_MODE = True
    return settings


def deliver(client, event: dict, *, signature: str | None = None, payload: str | None = None):
    """POST an event to the webhook, signed like Stripe unless told otherwise."""
    body = payload if payload is not None else json.dumps(event)
    headers = {}
    sig = stripe_signature(body) if signature is None else signature
    if sig:
        headers["HTTP_STRIPE_SIGNATURE"] = sig
    return client.post(WEBHOOK_URL, data=body, content_type="application/json", **headers)


def stripe_purchase(user, usd: int = 10) -> Purchase:
    """A purchase as start_checkout leaves it after Stripe opened its session."""
    return Purchase.objects.create(
        user=user,
        user_email=user.email,
        provider=Provider.STRIPE,
        amount_micros=usd * USD,
        provider_session_id=f"cs_test_{uuid.uuid4().hex}",
        idempotency_key=f"purchase:{uuid.uuid4().hex}",
    )


def event(event_type: str, obj: dict, *, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }


def session_event(purchase: Purchase, *, event_type: str = "checkout.session.completed",
                  amount_cents: int | None = None, payment_status: str = "paid",
                  currency: str = "usd", event_id: str | None = None) -> dict:
    cents = purchase.amount_micros // 10_000 if amount_cents is None else amount_cents
    return event(event_type, {
        "id": purchase.provider_session_id,
        "object": "checkout.session",
        "amount_total": cents,
        "currency": currency,
        "client_reference_id": str(purchase.pk),
        "customer_email": purchase.user_email,
        "metadata": {"purchase_id": str(purchase.pk), "user_id": str(purchase.user_id)},
        "mode": "payment",
        "payment_intent": payment_intent_id(purchase),
        "payment_status": payment_status,
        "status": "complete" if payment_status == "paid" else "open",
    }, event_id=event_id)


def refund_event(purchase: Purchase, *, refunded_cents: int, event_id: str | None = None) -> dict:
    cents = purchase.amount_micros // 10_000
    return event("charge.refunded", {
        "id": f"ch_{purchase.pk.hex[:24]}",
        "object": "charge",
        "amount": cents,
        "amount_captured": cents,
        "amount_refunded": refunded_cents,
        "currency": "usd",
        "payment_intent": payment_intent_id(purchase),
        "refunded": refunded_cents == cents,
    }, event_id=event_id)


def payment_intent_id(purchase: Purchase) -> str:
    return f"pi_{purchase.pk.hex[:24]}"


# --- a signed-in customer (the dashboard and onboarding pages) ---------------------------

PASSWORD = "correct-horse-battery"


@pytest.fixture
def member(db):
    """A customer who just registered (promotion window open) with their first key."""
    user, _key, _secret = account_services.register_user(email="grace@example.com", password=PASSWORD)
    return user


@pytest.fixture
def signed_in(client, member):
    client.force_login(member)
    return client


def backdate_signup(user, seconds: int) -> None:
    """Move date_joined into the past so the promotion window has run out."""
    user.date_joined = timezone.now() - dt.timedelta(seconds=seconds)
    user.save(update_fields=["date_joined"])


def make_usage(user, *, model_id: str = "demo-small", cost_micros: int = 1200, days_ago: int = 0,
               n: int = 0, prompt_tokens: int = 12, completion_tokens: int = 30) -> UsageRecord:
    model = AiModel.objects.get(pk=model_id)
    price = model.price_at()
    started = timezone.now() - dt.timedelta(days=days_ago)
    return UsageRecord.objects.create(
        request_id=f"req-{user.pk}-{model_id}-{days_ago}-{n}", user=user, model=model,
        endpoint="chat.completions", prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        input_price_per_million_micros=price.input_price_per_million_micros,
        output_price_per_million_micros=price.output_price_per_million_micros,
        cost_micros=cost_micros, status="SUCCEEDED", latency_ms=321, started_at=started,
    )
