"""The Stripe webhook: real payloads, signed like Stripe, posted to the endpoint."""

import json
import threading
import time

import pytest
from django.db import connection
from django.test import Client

from billing import services
from billing.models import EventOutcome, PaymentEvent, Purchase, PurchaseStatus
from billing.purchases import RefundProgress, refund_progress
from credits import services as credit_services
from credits.models import CreditGrant, EntryType, GrantKind, LedgerEntry
from tests.billing.conftest import (
    deliver,
    event,
    refund_event,
    session_event,
    stripe_purchase,
    stripe_signature,
)
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.usefixtures("stripe_keys")


def balance(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def test_paid_checkout_session_adds_a_purchased_grant_that_never_expires(client, user):
    purchase = stripe_purchase(user, usd=10)

    response = deliver(client, session_event(purchase))

    assert response.status_code == 200
    assert response.json()["outcome"] == "processed"
    assert balance(user) == 10 * USD
    grant = CreditGrant.objects.get(user=user)
    assert grant.kind == GrantKind.PURCHASED
    assert grant.expires_at is None
    assert grant.idempotency_key == f"stripe:{purchase.provider_session_id}"
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.FULFILLED
    assert purchase.grant == grant
    assert purchase.provider_payment_id.startswith("pi_")
    recorded = PaymentEvent.objects.get()
    assert recorded.event_type == "checkout.session.completed"
    assert recorded.processed_at is not None
    assert recorded.purchase == purchase
    assert recorded.payload["data"]["object"]["id"] == purchase.provider_session_id
    assert_books_balance(user.pk)


def test_replayed_event_answers_200_and_grants_nothing_more(client, user):
    purchase = stripe_purchase(user)
    paid = session_event(purchase)

    first, second = deliver(client, paid), deliver(client, paid)

    assert (first.status_code, second.status_code) == (200, 200)
    assert balance(user) == 10 * USD
    assert CreditGrant.objects.filter(user=user).count() == 1
    recorded = PaymentEvent.objects.get()
    assert recorded.deliveries == 2


def test_completion_and_async_success_for_one_session_credit_once(client, user):
    purchase = stripe_purchase(user)

    deliver(client, session_event(purchase))
    later = deliver(
        client, session_event(purchase, event_type="checkout.session.async_payment_succeeded")
    )

    assert later.status_code == 200
    assert later.json()["outcome"] == "ignored"
    assert balance(user) == 10 * USD
    assert PaymentEvent.objects.count() == 2


@pytest.mark.parametrize(
    "how", ["wrong secret", "tampered body", "missing header", "too old", "garbage header"]
)
def test_bad_signature_is_refused_with_400_and_nothing_written(client, user, how):
    purchase = stripe_purchase(user)
    body = json.dumps(session_event(purchase))
    signature, payload = {
        "wrong secret": (stripe_signature(body, secret="whsec_someone_else"), body),
        "tampered body": (stripe_signature(body), body.replace('"paid"', '"paid" ')),
        "missing header": ("", body),
        "too old": (stripe_signature(body, timestamp=int(time.time()) - 3600), body),
        "garbage header": ("t=abc,v1=zzz", body),
    }[how]

    response = deliver(client, {}, signature=signature, payload=payload)

    assert response.status_code == 400
    assert PaymentEvent.objects.count() == 0
    assert CreditGrant.objects.count() == 0
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING


def test_webhook_without_a_configured_secret_refuses_everything(client, user, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    purchase = stripe_purchase(user)

    response = deliver(client, session_event(purchase))

    assert response.status_code == 400
    assert PaymentEvent.objects.count() == 0


def test_unknown_event_type_is_recorded_and_ignored(client, user):
    response = deliver(client, event("customer.created", {"id": "cus_123", "object": "customer"}))

    assert response.status_code == 200
    recorded = PaymentEvent.objects.get()
    assert (recorded.event_type, recorded.outcome) == ("customer.created", EventOutcome.IGNORED)
    assert recorded.processed_at is not None


def test_signed_event_without_data_is_recorded_as_rejected(client, user):
    malformed = {"id": "evt_malformed", "object": "event", "type": "checkout.session.completed"}

    response = deliver(client, malformed)

    assert response.status_code == 200
    assert PaymentEvent.objects.get().outcome == EventOutcome.REJECTED
    assert CreditGrant.objects.count() == 0


def test_session_for_no_known_purchase_is_recorded_and_ignored(client, user):
    stray = stripe_purchase(user)
    paid = session_event(stray)
    stray.delete()

    response = deliver(client, paid)

    assert response.status_code == 200
    assert PaymentEvent.objects.get().outcome == EventOutcome.IGNORED
    assert CreditGrant.objects.count() == 0


@pytest.mark.parametrize(
    ("amount_cents", "currency"), [(999, "usd"), (100_000, "usd"), (1000, "eur")]
)
def test_payment_not_matching_the_purchase_is_not_credited_and_goes_to_review(
    client, user, amount_cents, currency
):
    purchase = stripe_purchase(user, usd=10)

    response = deliver(client, session_event(purchase, amount_cents=amount_cents, currency=currency))

    assert response.status_code == 200
    assert response.json()["outcome"] == "rejected"
    assert balance(user) == 0
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.REVIEW
    assert "Not credited" in purchase.status_note


def test_payment_for_a_user_deleted_meanwhile_is_recorded_for_review(client, make_user):
    leaving = make_user("leaving@example.com")
    purchase = stripe_purchase(leaving)
    leaving.delete()

    response = deliver(client, session_event(purchase))

    assert response.status_code == 200
    purchase.refresh_from_db()
    assert purchase.user is None
    assert purchase.status == PurchaseStatus.REVIEW
    assert "deleted" in purchase.status_note
    assert CreditGrant.objects.count() == 0


def test_unpaid_completion_waits_for_the_async_payment(client, user):
    purchase = stripe_purchase(user)

    deliver(client, session_event(purchase, payment_status="unpaid"))
    assert balance(user) == 0
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING

    deliver(client, session_event(purchase, event_type="checkout.session.async_payment_succeeded"))
    assert balance(user) == 10 * USD


@pytest.mark.parametrize(
    "event_type", ["checkout.session.expired", "checkout.session.async_payment_failed"]
)
def test_expired_or_failed_checkout_marks_the_purchase_failed(client, user, event_type):
    purchase = stripe_purchase(user)

    response = deliver(client, session_event(purchase, event_type=event_type, payment_status="unpaid"))

    assert response.status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.FAILED
    assert CreditGrant.objects.count() == 0


def test_full_refund_takes_the_credit_back(client, user):
    purchase = stripe_purchase(user, usd=10)
    deliver(client, session_event(purchase))

    response = deliver(client, refund_event(purchase, refunded_cents=1000))

    assert response.status_code == 200
    assert balance(user) == 0
    purchase.refresh_from_db()
    assert purchase.refunded_micros == 10 * USD
    assert refund_progress(purchase=purchase) == RefundProgress(10 * USD, 0, 0)
    assert purchase.refund_state == "Refunded"
    refund = LedgerEntry.objects.get(user=user, entry_type=EntryType.REFUND)
    assert refund.amount_micros == -10 * USD
    assert refund.grant_id == purchase.grant_id
    assert_books_balance(user.pk)


def test_partial_refunds_take_back_only_the_newly_refunded_part(client, user):
    purchase = stripe_purchase(user, usd=25)
    deliver(client, session_event(purchase))

    deliver(client, refund_event(purchase, refunded_cents=500))
    assert balance(user) == 20 * USD
    # Stripe reports the running total: a second refund of $7.50 arrives as 1250.
    second = refund_event(purchase, refunded_cents=1250)
    deliver(client, second)
    deliver(client, second)  # replayed

    assert balance(user) == 25 * USD - 12_500_000
    purchase.refresh_from_db()
    assert purchase.refunded_micros == 12_500_000
    assert purchase.refund_state == "Partly refunded"
    assert LedgerEntry.objects.filter(user=user, entry_type=EntryType.REFUND).count() == 2
    assert_books_balance(user.pk)


def test_refund_of_credit_already_spent_never_goes_below_zero_and_records_the_shortfall(
    client, user
):
    purchase = stripe_purchase(user, usd=10)
    deliver(client, session_event(purchase))
    credit_services.use_credits(user=user, amount_micros=8 * USD, reference="call-1")

    response = deliver(client, refund_event(purchase, refunded_cents=1000))

    assert response.status_code == 200
    assert balance(user) == 0
    purchase.refresh_from_db()
    assert purchase.refunded_micros == 10 * USD
    assert refund_progress(purchase=purchase).shortfall_micros == 8 * USD
    assert "could not be taken back" in PaymentEvent.objects.get(event_type="charge.refunded").note
    assert_books_balance(user.pk)


def test_refund_never_touches_other_credit(client, user, fund):
    purchase = stripe_purchase(user, usd=10)
    deliver(client, session_event(purchase))
    fund(user, usd=50, kind=GrantKind.ADJUSTMENT, description="goodwill")
    # Never-expiring grants burn oldest first: this spends the purchased $10.
    credit_services.use_credits(user=user, amount_micros=10 * USD)

    deliver(client, refund_event(purchase, refunded_cents=1000))

    assert balance(user) == 50 * USD
    purchase.refresh_from_db()
    assert refund_progress(purchase=purchase).shortfall_micros == 10 * USD
    assert_books_balance(user.pk)


def test_refund_before_completion_is_kept_and_applied_when_the_payment_arrives(client, user):
    purchase = stripe_purchase(user, usd=10)

    early = deliver(client, refund_event(purchase, refunded_cents=400))
    assert early.status_code == 200
    assert early.json()["outcome"] == "deferred"
    assert balance(user) == 0

    deliver(client, session_event(purchase))

    assert balance(user) == 6 * USD
    purchase.refresh_from_db()
    assert purchase.refunded_micros == 4 * USD
    refund = PaymentEvent.objects.get(event_type="charge.refunded")
    assert refund.outcome == EventOutcome.PROCESSED
    assert refund.purchase == purchase
    assert_books_balance(user.pk)


def test_fulfilment_failing_halfway_leaves_nothing_and_succeeds_on_retry(client, user, monkeypatch):
    purchase = stripe_purchase(user)
    paid = session_event(purchase)
    # A crash after the grant and the purchase row were written, before commit.
    real = services._apply_deferred_refunds

    def crash(p):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "_apply_deferred_refunds", crash)
    failed = deliver(client, paid)

    assert failed.status_code == 500
    assert CreditGrant.objects.count() == 0
    assert LedgerEntry.objects.count() == 0
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING
    recorded = PaymentEvent.objects.get()
    assert recorded.processed_at is None
    assert "database went away" in recorded.last_error

    monkeypatch.setattr(services, "_apply_deferred_refunds", real)
    retried = deliver(client, paid)

    assert retried.status_code == 200
    assert balance(user) == 10 * USD
    recorded.refresh_from_db()
    assert (recorded.deliveries, recorded.last_error) == (2, "")
    assert_books_balance(user.pk)


def _deliver_together(bodies: list[dict]) -> list[int]:
    barrier = threading.Barrier(len(bodies))
    codes: list = [None] * len(bodies)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            codes[i] = deliver(Client(), bodies[i]).status_code
        except Exception as exc:
            codes[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return codes


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_deliveries_grant_once(make_user):
    user = make_user("racer@example.com")
    purchase = stripe_purchase(user, usd=25)
    paid = session_event(purchase)

    codes = _deliver_together([paid] * 6)

    assert codes == [200] * 6
    assert CreditGrant.objects.filter(user=user).count() == 1
    assert balance(user) == 25 * USD
    assert PaymentEvent.objects.get().deliveries == 6
    assert_books_balance(user.pk)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_different_events_for_one_session_grant_once(make_user):
    user = make_user("racer2@example.com")
    purchase = stripe_purchase(user, usd=10)
    bodies = [
        session_event(purchase, event_type=t)
        for t in ["checkout.session.completed", "checkout.session.async_payment_succeeded"] * 3
    ]

    codes = _deliver_together(bodies)

    assert codes == [200] * 6
    assert CreditGrant.objects.filter(user=user).count() == 1
    assert balance(user) == 10 * USD
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.FULFILLED
    assert Purchase.objects.count() == 1
    assert_books_balance(user.pk)
