"""Refunds and disputes of credit that calls in flight hold: taken back when they finish,
never spendable in between (issue 12, point 4). Signed Stripe events, as test_webhooks."""

import uuid

import pytest

from billing.models import EventOutcome, PaymentEvent
from billing.purchases import RefundProgress, refund_progress
from credits import services as credit_services
from credits.exceptions import InsufficientCredits
from credits.models import CreditGrant, EntryType, LedgerEntry
from credits.selectors import get_user_credits
from tests.billing.conftest import (
    USD,
    deliver,
    event,
    payment_intent_id,
    refund_event,
    session_event,
    stripe_purchase,
)
from tests.books import assert_books_balance

pytestmark = pytest.mark.usefixtures("stripe_keys")


def balance(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def assert_cannot_spend(user) -> None:
    assert get_user_credits(user=user).available_micros == 0
    with pytest.raises(InsufficientCredits):
        credit_services.use_credits(user=user, amount_micros=1, reference="after-refund")


def paid_purchase_with_a_call_in_flight(client, user, *, usd=10, held_usd=9):
    purchase = stripe_purchase(user, usd=usd)
    deliver(client, session_event(purchase))
    purchase.refresh_from_db()
    hold = credit_services.authorize(user=user, amount_micros=held_usd * USD, reference="call-1")
    return purchase, hold


def dispute_event(purchase, *, event_type="charge.dispute.created", amount_cents=None,
                  status="needs_response", dispute_id=None, payment_intent=None):
    return event(event_type, {
        "id": dispute_id or f"dp_{purchase.pk.hex[:24]}",
        "object": "dispute",
        "amount": purchase.amount_micros // 10_000 if amount_cents is None else amount_cents,
        "charge": f"ch_{purchase.pk.hex[:24]}",
        "currency": "usd",
        "payment_intent": payment_intent or payment_intent_id(purchase),
        "reason": "fraudulent",
        "status": status,
    })


# --- refunds ---------------------------------------------------------------------------


def test_refund_while_credit_is_held_takes_back_what_the_call_releases(client, user):
    purchase, hold = paid_purchase_with_a_call_in_flight(client, user)

    response = deliver(client, refund_event(purchase, refunded_cents=1000))

    assert response.status_code == 200
    assert "taken back when they finish" in response.json()["note"]
    assert refund_progress(purchase=purchase) == RefundProgress(1 * USD, 9 * USD, 0)
    assert not refund_progress(purchase=purchase).complete
    assert_cannot_spend(user)
    assert_books_balance(user.pk)

    credit_services.release(hold=hold)

    assert balance(user) == 0
    assert_cannot_spend(user)
    assert refund_progress(purchase=purchase) == RefundProgress(10 * USD, 0, 0)
    assert refund_progress(purchase=purchase).complete
    refunds = LedgerEntry.objects.filter(user=user, entry_type=EntryType.REFUND)
    assert sorted(e.amount_micros for e in refunds) == [-9 * USD, -1 * USD]
    assert all(e.grant_id == purchase.grant_id for e in refunds)
    assert_books_balance(user.pk)


def test_refund_while_held_then_partial_capture_takes_back_only_the_unspent_part(client, user):
    purchase, hold = paid_purchase_with_a_call_in_flight(client, user)
    deliver(client, refund_event(purchase, refunded_cents=1000))

    credit_services.capture(hold=hold, amount_micros=4 * USD)

    assert balance(user) == 0
    assert_cannot_spend(user)
    # The call spent $4 of the refunded credit: that is the shortfall, the $5 it released is taken.
    assert refund_progress(purchase=purchase) == RefundProgress(6 * USD, 0, 4 * USD)
    assert_books_balance(user.pk)


def test_partial_refund_while_held_leaves_the_rest_spendable(client, user):
    purchase, hold = paid_purchase_with_a_call_in_flight(client, user)
    deliver(client, refund_event(purchase, refunded_cents=500))  # $5 of $10; $1 free

    assert refund_progress(purchase=purchase) == RefundProgress(1 * USD, 4 * USD, 0)
    credit_services.release(hold=hold)

    assert balance(user) == 5 * USD
    credit_services.use_credits(user=user, amount_micros=5 * USD)
    assert refund_progress(purchase=purchase).complete
    assert_books_balance(user.pk)


# --- disputes --------------------------------------------------------------------------


def test_dispute_created_takes_the_disputed_credit_back_like_a_refund(client, user):
    purchase = stripe_purchase(user, usd=10)
    deliver(client, session_event(purchase))
    credit_services.use_credits(user=user, amount_micros=3 * USD)
    created = dispute_event(purchase)

    first, replay = deliver(client, created), deliver(client, created)

    assert (first.status_code, replay.status_code) == (200, 200)
    assert first.json()["outcome"] == "processed"
    assert balance(user) == 0
    assert refund_progress(purchase=purchase) == RefundProgress(7 * USD, 0, 3 * USD)
    assert LedgerEntry.objects.filter(user=user, entry_type=EntryType.REFUND).count() == 1
    assert_books_balance(user.pk)


def test_dispute_won_gives_the_credit_back_as_a_new_grant(client, user):
    purchase = stripe_purchase(user, usd=10)
    deliver(client, session_event(purchase))
    deliver(client, dispute_event(purchase))
    assert balance(user) == 0
    won = dispute_event(purchase, event_type="charge.dispute.closed", status="won")

    first, replay = deliver(client, won), deliver(client, won)

    assert (first.status_code, replay.status_code) == (200, 200)
    assert "given back" in first.json()["note"]
    assert balance(user) == 10 * USD
    assert CreditGrant.objects.filter(user=user).count() == 2  # history kept, a grant added
    assert LedgerEntry.objects.filter(user=user, entry_type=EntryType.REFUND).count() == 1
    assert_books_balance(user.pk)


def test_dispute_lost_keeps_the_credit_taken_back(client, user):
    purchase = stripe_purchase(user, usd=10)
    deliver(client, session_event(purchase))
    deliver(client, dispute_event(purchase))

    lost = deliver(client, dispute_event(purchase, event_type="charge.dispute.closed",
                                         status="lost"))

    assert lost.status_code == 200
    assert balance(user) == 0
    assert CreditGrant.objects.filter(user=user).count() == 1
    assert_books_balance(user.pk)


def test_dispute_won_while_a_call_still_holds_the_credit_leaves_the_user_whole(client, user):
    purchase, hold = paid_purchase_with_a_call_in_flight(client, user)
    deliver(client, dispute_event(purchase))
    assert refund_progress(purchase=purchase) == RefundProgress(1 * USD, 9 * USD, 0)

    deliver(client, dispute_event(purchase, event_type="charge.dispute.closed", status="won"))
    credit_services.release(hold=hold)

    # $1 taken and given back as a new grant; the $9 the call held is no longer owed.
    assert balance(user) == 10 * USD
    assert get_user_credits(user=user).available_micros == 10 * USD
    assert refund_progress(purchase=purchase).complete
    assert_books_balance(user.pk)


def test_dispute_of_an_unknown_charge_is_recorded_for_review(client, user):
    purchase = stripe_purchase(user, usd=10)
    deliver(client, session_event(purchase))

    response = deliver(client, dispute_event(purchase, payment_intent=f"pi_{uuid.uuid4().hex}",
                                             dispute_id="dp_unknown"))

    assert response.status_code == 200
    assert response.json()["outcome"] == EventOutcome.REVIEW
    recorded = PaymentEvent.objects.get(event_type="charge.dispute.created")
    assert recorded.processed_at is not None and recorded.outcome == EventOutcome.REVIEW
    assert balance(user) == 10 * USD
