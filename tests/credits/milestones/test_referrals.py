"""Referrals: attribution once, the reward on the condition, the refusals, the cap, the claw back."""

import datetime as dt

import pytest
from django.core.exceptions import ValidationError

from accounts.models import User
from credits import services
from credits.models import (
    CreditGrant,
    GrantKind,
    Referral,
    ReferralCondition,
    ReferralProgram,
    ReferralStatus,
)
from credits.promotion import referrals
from credits.promotion.referrals import settle_referral
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.django_db


@pytest.fixture
def referrer(db):
    return User.objects.create_user("host@example.com", "correct-horse-battery")


@pytest.fixture
def code(referrer):
    return referrals.referral_code_for(user=referrer)


def buy(user, usd=10):
    services.add_credit(user=user, amount_micros=usd * USD, kind=GrantKind.PURCHASED,
                        expires_at=None)


def register_via(client_register, email, code, ip):
    from rest_framework.test import APIClient

    response = APIClient().post("/api/auth/register", {
        "email": email, "password": "a-long-passphrase-42", "referral_code": code},
        format="json", REMOTE_ADDR=ip)
    assert response.status_code == 201, response.content
    return User.objects.get(email=email)


def test_sign_up_through_the_link_is_attributed_once_and_rewarded_on_first_purchase(
        referrer, code, register):
    friend = register_via(register, "friend@example.org", code, "203.0.113.9")
    assert Referral.objects.get(referred=friend).referrer == referrer
    other = User.objects.create_user("other@example.com", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=referrals.referral_code_for(user=other))
    assert Referral.objects.get(referred=friend).referrer == referrer  # attributed once

    assert settle_referral(referred=friend).rewarded_now is False  # no purchase yet
    buy(friend)
    outcome = settle_referral(referred=friend)
    assert outcome.rewarded_now is True
    referral = Referral.objects.get(referred=friend)
    assert referral.status == ReferralStatus.REWARDED
    assert referral.referrer_grant.user == referrer
    assert referral.referrer_grant.amount_micros == 10 * USD
    assert referral.referred_grant.user == friend
    assert referral.referred_grant.kind == GrantKind.REFERRAL
    assert settle_referral(referred=friend).rewarded_now is False  # exactly once
    assert CreditGrant.objects.filter(kind=GrantKind.REFERRAL).count() == 2
    assert_books_balance(referrer.pk, friend.pk)


def test_unknown_and_own_codes_attribute_nothing(referrer, code):
    assert referrals.attribute_referral(user=referrer, code=code) is None
    stranger = User.objects.create_user("x@example.org", "correct-horse-battery")
    assert referrals.attribute_referral(user=stranger, code="nope") is None
    assert referrals.attribute_referral(user=stranger, code="<script>") is None


def test_same_sign_up_network_is_refused(referrer, code, register):
    from credits.models import SignupRecord

    SignupRecord.objects.create(user=referrer, email_normalized=referrer.email,
                                ip="198.51.100.7", network="198.51.100.0/24",
                                created_at=referrer.date_joined)
    friend = register_via(register, "friend@example.org", code, "198.51.100.99")
    buy(friend)
    settle_referral(referred=friend)
    referral = Referral.objects.get(referred=friend)
    assert referral.status == ReferralStatus.REFUSED
    assert referral.refusal_reason == referrals.REFUSED_SAME_NETWORK
    assert not CreditGrant.objects.filter(kind=GrantKind.REFERRAL).exists()


def test_same_payment_fingerprint_is_refused(referrer, code):
    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=code)
    referrals.record_payment_fingerprint(user_id=referrer.pk, fingerprint="fp_card_1")
    referrals.record_payment_fingerprint(user_id=friend.pk, fingerprint="fp_card_1")
    buy(friend)
    settle_referral(referred=friend)
    referral = Referral.objects.get(referred=friend)
    assert (referral.status, referral.refusal_reason) == (
        ReferralStatus.REFUSED, referrals.REFUSED_SAME_PAYMENT)


def test_same_normalized_email_is_refused(referrer, code):
    # An old account whose normalized form collided (email_normalized empty): same mailbox.
    alias = User.objects.create_user("h.o.s.t+x@gmail.com", "correct-horse-battery")
    twin = User.objects.create_user("host-twin@example.com", "correct-horse-battery")
    User.objects.filter(pk=referrer.pk).update(email="host@gmail.com", email_normalized=None)
    referrals.attribute_referral(user=alias, code=code)
    buy(alias)
    settle_referral(referred=alias)
    referral = Referral.objects.get(referred=alias)
    assert (referral.status, referral.refusal_reason) == (
        ReferralStatus.REFUSED, referrals.REFUSED_SAME_EMAIL)
    assert twin  # another address is not the same person


def test_monthly_cap_per_referrer(referrer, code):
    ReferralProgram.objects.create(name="Tight", referrer_amount_micros=5 * USD,
                                   referred_amount_micros=5 * USD, monthly_cap=2)
    friends = [User.objects.create_user(f"f{i}@example.org", "correct-horse-battery")
               for i in range(3)]
    for friend in friends:
        referrals.attribute_referral(user=friend, code=code)
        buy(friend)
        settle_referral(referred=friend)
    statuses = [Referral.objects.get(referred=f).status for f in friends]
    assert statuses == [ReferralStatus.REWARDED, ReferralStatus.REWARDED, ReferralStatus.REFUSED]
    assert Referral.objects.get(referred=friends[2]).refusal_reason == \
        referrals.REFUSED_MONTHLY_CAP


def test_the_programme_kill_switch_decides_nothing(referrer, code):
    ReferralProgram.objects.create(name="Off", is_active=False, referrer_amount_micros=USD,
                                   referred_amount_micros=USD)
    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=code)
    buy(friend)
    assert settle_referral(referred=friend).rewarded_now is False
    assert Referral.objects.get(referred=friend).status == ReferralStatus.PENDING


def test_condition_as_data_first_token(referrer, code):
    ReferralProgram.objects.create(name="Tokens", condition=ReferralCondition.FIRST_TOKEN,
                                   referrer_amount_micros=USD, referred_amount_micros=0)
    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=code)
    buy(friend)
    assert settle_referral(referred=friend).rewarded_now is False
    User.objects.filter(pk=friend.pk).update(first_token_at=friend.date_joined
                                             + dt.timedelta(seconds=5))
    outcome = settle_referral(referred=friend)
    assert outcome.rewarded_now and outcome.referral.referred_grant is None


def test_staff_claw_back_voids_what_is_left_of_both_grants(referrer, code, finance):
    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=code)
    buy(friend)
    settle_referral(referred=friend)
    services.use_credits(user=referrer, amount_micros=4 * USD)  # spends referral credit
    with pytest.raises(ValidationError):
        referrals.claw_back_referral(referral=Referral.objects.get(referred=friend),
                                     actor=finance, reason="")
    referral = referrals.claw_back_referral(referral=Referral.objects.get(referred=friend),
                                            actor=finance, reason="self-referral ring")
    assert referral.status == ReferralStatus.CLAWED_BACK
    assert referral.clawed_back_micros == 6 * USD + 10 * USD
    assert referrer.credit_account.__class__.objects.get(user=referrer).balance_micros == 0
    assert_books_balance(referrer.pk, friend.pk)


def test_purchase_signal_records_the_fingerprint_and_settles(referrer, code, eager_tasks,
                                                             django_capture_on_commit_callbacks):
    from billing.models import Purchase, PurchaseStatus
    from billing.services import fulfil_purchase

    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=code)
    referrals.record_payment_fingerprint(user_id=referrer.pk, fingerprint="fp_shared")
    purchase = Purchase.objects.create(user=friend, user_email=friend.email, provider="test",
                                       amount_micros=10 * USD, idempotency_key="p1",
                                       provider_session_id="cs_1")
    with django_capture_on_commit_callbacks(execute=True):
        fulfil_purchase(purchase=purchase, session_id="cs_1", amount_paid_micros=10 * USD,
                        currency="usd", payment_fingerprint="fp_shared")
    assert Purchase.objects.get(pk=purchase.pk).status == PurchaseStatus.FULFILLED
    referral = Referral.objects.get(referred=friend)
    assert (referral.status, referral.refusal_reason) == (
        ReferralStatus.REFUSED, referrals.REFUSED_SAME_PAYMENT)


def test_dashboard_card_shows_link_referrals_and_earnings(referrer, code, client):
    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    referrals.attribute_referral(user=friend, code=code)
    buy(friend)
    settle_referral(referred=friend)
    client.force_login(referrer)
    page = client.get("/billing/").content.decode()
    assert f"/accounts/signup/?ref={code}" in page
    assert "data-referral-earned>$10.00<" in page
    assert "data-referral-count>1<" in page




