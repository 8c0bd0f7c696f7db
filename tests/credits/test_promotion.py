"""The $20 first-token promotion: within 180 s of registering, exactly once."""

import datetime as dt

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.models import User
from credits import services
from credits.exceptions import InsufficientCredits
from credits.models import CreditGrant, EntryType, GrantKind, LedgerEntry
from credits.models.promotions import FIRST_TOKEN_PROMOTION_KEY
from credits.promotion.award import apply_first_token_promotion
from credits.promotion.status import check_promotion_eligibility
from inference.services import record_first_token
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.django_db


def first_token_after(user: User, seconds: float) -> None:
    record_first_token(user_id=user.pk, at=user.date_joined + dt.timedelta(seconds=seconds))
    user.refresh_from_db()


def promotional_grants(user):
    return CreditGrant.objects.filter(user=user, kind=GrantKind.PROMOTIONAL)


def test_first_token_at_exactly_180_seconds_earns_20_dollars(user):
    first_token_after(user, 180)
    grant = promotional_grants(user).get()
    assert grant.amount_micros == 20 * USD
    assert user.credit_balance == 20 * USD
    assert (user.promotion_claimed, user.promotion_eligible) == (True, True)
    assert grant.expires_at == grant.granted_at + dt.timedelta(days=30)
    assert_books_balance(user.pk)


def test_first_token_after_the_window_earns_nothing(user):
    first_token_after(user, 180.001)
    assert not promotional_grants(user).exists()
    assert user.credit_balance == 0
    assert (user.promotion_claimed, user.promotion_eligible) == (False, False)


def test_only_the_first_token_counts(user):
    first_token_after(user, 5)
    assert record_first_token(user_id=user.pk) is False
    apply_first_token_promotion(user=user)
    assert promotional_grants(user).count() == 1
    assert User.objects.get(pk=user.pk).credit_balance == 20 * USD


@override_settings(PROMOTION_AMOUNT_USD="5", PROMOTION_WINDOW_SECONDS=10, PROMOTION_EXPIRY_DAYS=7)
def test_the_promotion_follows_its_settings(user):
    first_token_after(user, 10)
    grant = promotional_grants(user).get()
    assert grant.amount_micros == 5 * USD
    assert grant.expires_at - grant.granted_at == dt.timedelta(days=7)


def test_eligibility_counts_down_from_registration(user):
    eligible, remaining = check_promotion_eligibility(
        user=user, now=user.date_joined + dt.timedelta(seconds=30))
    assert (eligible, remaining) == (True, 150.0)
    eligible, remaining = check_promotion_eligibility(
        user=user, now=user.date_joined + dt.timedelta(seconds=181))
    assert (eligible, remaining) == (False, 0.0)


def test_no_promotion_without_a_first_token(user):
    assert apply_first_token_promotion(user=user) is None
    assert not promotional_grants(user).exists()


def test_a_user_in_the_window_can_start_a_call_against_the_pending_promotion(user):
    now = user.date_joined + dt.timedelta(seconds=60)
    hold = services.authorize(user=user, amount_micros=USD, reference="req-42", now=now)
    assert hold.pending_promotion_micros == USD
    record_first_token(user_id=user.pk, at=now)
    hold.refresh_from_db()
    assert hold.pending_promotion_micros == 0  # now backed by the promotional grant
    backing = LedgerEntry.objects.get(hold=hold, entry_type=EntryType.HOLD)
    assert (backing.held_change_micros, backing.reference) == (USD, "req-42")
    services.capture(hold=hold, amount_micros=250_000, now=now)
    user.refresh_from_db()
    assert user.credit_balance == 20 * USD - 250_000
    assert_books_balance(user.pk)


def test_pending_promotion_cannot_be_reserved_beyond_its_amount(user):
    now = user.date_joined + dt.timedelta(seconds=1)
    services.authorize(user=user, amount_micros=15 * USD, now=now)
    with pytest.raises(InsufficientCredits):
        services.authorize(user=user, amount_micros=6 * USD, now=now)
    services.authorize(user=user, amount_micros=5 * USD, now=now)


def test_a_late_first_token_on_a_pending_call_charges_nothing(user):
    start = user.date_joined + dt.timedelta(seconds=170)
    hold = services.authorize(user=user, amount_micros=USD, now=start)
    record_first_token(user_id=user.pk, at=user.date_joined + dt.timedelta(seconds=181))
    with pytest.raises(InsufficientCredits, match="promotion"):
        services.capture(hold=hold, amount_micros=10, now=timezone.now())
    services.release(hold=hold)
    user.refresh_from_db()
    assert user.credit_balance == 0 and not promotional_grants(user).exists()
    assert_books_balance(user.pk)


def test_a_user_past_the_window_cannot_borrow_against_the_promotion(user):
    with pytest.raises(InsufficientCredits):
        services.authorize(user=user, amount_micros=1,
                           now=user.date_joined + dt.timedelta(seconds=181))


def test_the_database_refuses_a_second_first_token_promotion(user):
    first_token_after(user, 1)
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        CreditGrant.objects.create(
            user=user, kind=GrantKind.PROMOTIONAL, amount_micros=USD, remaining_micros=0,
            granted_at=timezone.now(), idempotency_key=FIRST_TOKEN_PROMOTION_KEY)
