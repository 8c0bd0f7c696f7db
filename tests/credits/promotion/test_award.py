"""The first-token award (credits.promotion.award): $20 within 180 s of registering, exactly
once; and the abuse controls at award time: once per normalized email, promotions per network
per day, spend caps that pause the promotion."""

import datetime as dt

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from credits import services
from credits.exceptions import InsufficientCredits
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    PromotionClaim,
)
from credits.models.promotions import FIRST_TOKEN_PROMOTION_KEY
from credits.promotion.award import apply_first_token_promotion
from credits.promotion.messages import (
    OFFER_PAUSED,
    WITHHELD_CLAIMED,
    WITHHELD_IP,
    WITHHELD_NETWORK_PROMOTIONS,
    WITHHELD_PAUSED,
)
from credits.promotion.status import check_promotion_eligibility
from credits.promotion.terms import live_promotion
from inference.services import record_first_token
from tests.books import USD, assert_books_balance

from .conftest import first_token, first_token_after, promotion_json, signed_up

# --- once per normalized email -----------------------------------------------------------


def test_the_credit_is_given_once_per_normalized_email_even_after_the_account_is_gone(
        live, register):
    first = signed_up(register, "ada.lovelace@gmail.com")
    assert first_token(first).amount_micros == 20 * USD
    claim = PromotionClaim.objects.get()
    assert (claim.email_normalized, claim.user_id) == ("adalovelace@gmail.com", first.pk)
    # The account is closed and its address released (grants keep the row, so: renamed).
    User.objects.filter(pk=first.pk).update(email="closed-1@tokenbank.invalid",
                                            email_normalized="closed-1@tokenbank.invalid")
    again = signed_up(register, "adalovelace+again@gmail.com", ip="192.0.2.50")
    assert promotion_json(again)["withheld_reason"] == WITHHELD_CLAIMED
    assert first_token(again) is None
    assert PromotionClaim.objects.count() == 1


def test_the_claim_is_checked_again_when_the_credit_is_awarded(live, make_user):
    # An account that skipped the sign-up checks (created in a shell) still cannot claim twice.
    PromotionClaim.objects.create(email_normalized="grace@example.com", amount_micros=20 * USD,
                                  claimed_at=timezone.now())
    user = make_user("Grace@Example.com")
    assert first_token(user) is None
    assert user.promotion_eligible is False
    assert user.promotion_withheld_reason == WITHHELD_CLAIMED


# --- promotions per network per day ------------------------------------------------------


def test_promotions_per_network_per_day_are_limited_at_award_and_at_sign_up(live, settings, register):
    settings.PROMOTIONS_PER_NETWORK_PER_DAY = 1
    a = signed_up(register, "a@example.com", ip="203.0.113.5")
    b = signed_up(register, "b@example.com", ip="203.0.113.6")
    assert promotion_json(b)["eligible"] is True  # nobody claimed yet
    assert first_token(a) is not None
    assert first_token(b) is None
    assert promotion_json(b)["withheld_reason"] == WITHHELD_NETWORK_PROMOTIONS
    c = signed_up(register, "c@example.com", ip="203.0.113.7")
    assert promotion_json(c) | {"deadline": None, "seconds_remaining": None} == {
        "eligible": False, "claimed": False, "deadline": None, "seconds_remaining": None,
        "amount": "20.000000", "withheld_reason": WITHHELD_NETWORK_PROMOTIONS}
    # Elsewhere the offer is unaffected.
    assert first_token(signed_up(register, "d@example.com", ip="192.0.2.9")) is not None


def test_a_call_relying_on_a_withheld_promotion_says_why_and_charges_nothing(live, settings, register):
    settings.SIGNUPS_PER_IP_PER_HOUR = 1
    signed_up(register, "first@example.com", ip="198.51.100.1")
    response = register("second@example.com", ip="198.51.100.1")
    secret = response.json()["api_key"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    call = client.post("/v1/chat/completions", {"model": "demo-small", "max_tokens": 8,
                                                "messages": [{"role": "user", "content": "hi"}]},
                       format="json")
    assert call.status_code == 402
    error = call.json()["error"]
    assert error["type"] == "insufficient_credits" and WITHHELD_IP in error["message"]
    assert not LedgerEntry.objects.filter(user__email="second@example.com").exists()
    assert promotion_json(User.objects.get(email="second@example.com"))["withheld_reason"] == (
        WITHHELD_IP)


# --- spend caps --------------------------------------------------------------------------


def test_past_the_hourly_cap_the_promotion_pauses_itself_and_staff_are_told_once(
        live, settings, make_user, mailoutbox, eager_tasks, django_capture_on_commit_callbacks):
    settings.PROMOTION_CAP_USD_PER_HOUR = "50"
    make_user("ops@tokenbank.test", is_staff=True)
    users = [make_user(f"cap{i}@example.com") for i in range(4)]
    with django_capture_on_commit_callbacks(execute=True):
        grants = [first_token(u) for u in users[:3]]
    assert [g is not None for g in grants] == [True, True, False]
    live.refresh_from_db()
    assert live.is_active is False and "PROMOTION_CAP_USD_PER_HOUR" in live.paused_reason
    paused_mail = [m for m in mailoutbox if "paused itself" in m.subject]
    assert len(paused_mail) == 1 and paused_mail[0].to == ["ops@tokenbank.test"]
    # Everyone still waiting is told the offer is paused, never shown a stale offer.
    assert users[2].promotion_withheld_reason == WITHHELD_PAUSED
    status = promotion_json(users[3])
    assert status["eligible"] is False and status["withheld_reason"] == OFFER_PAUSED
    assert live_promotion() is None
    with django_capture_on_commit_callbacks(execute=True):
        assert first_token(users[3]) is None
    assert len([m for m in mailoutbox if "paused itself" in m.subject]) == 1
    assert sum(PromotionClaim.objects.values_list("amount_micros", flat=True)) == 40 * USD
    assert_books_balance()


def test_the_daily_cap_counts_the_last_24_hours(live, settings, make_user):
    settings.PROMOTION_CAP_USD_PER_DAY = "30"
    PromotionClaim.objects.create(email_normalized="old@example.com", amount_micros=20 * USD,
                                  claimed_at=timezone.now() - dt.timedelta(hours=25))
    assert first_token(make_user("one@example.com")) is not None
    assert first_token(make_user("two@example.com")) is None
    live.refresh_from_db()
    assert "PROMOTION_CAP_USD_PER_DAY" in live.paused_reason


# --- the first-token rule ---------------------------------------------------------------


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
