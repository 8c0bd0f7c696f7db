"""Exactly once under races on PostgreSQL (real threads, each closing its connection)."""

import datetime as dt

import pytest

from accounts.models import User
from credits import services
from credits.models import CreditGrant, GrantKind, Referral, ReferralStatus, TierAward
from credits.promotion import referrals, triggers
from credits.promotion.milestones import award_tier, evaluate_milestones
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently
from tests.credits.milestones.conftest import tier

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_twenty_racing_evaluations_award_each_tier_once(ladder):
    user = User.objects.create_user("race@example.com", "correct-horse-battery")
    services.add_credit(user=user, amount_micros=40 * USD, kind=GrantKind.PURCHASED,
                        expires_at=None)
    User.objects.filter(pk=user.pk).update(email_verified_at=user.date_joined)

    results = run_concurrently(lambda i: evaluate_milestones(user=user.pk), 20)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert TierAward.objects.filter(user=user).count() == 2  # the purchase and the email
    assert CreditGrant.objects.filter(user=user, source_reference__startswith="tier:").count() == 2
    assert sum(len(r) for r in results) == 2  # each made by exactly one thread
    assert_books_balance(user.pk)


def test_twenty_racing_awards_of_one_tier_grant_it_once(ladder):
    user = User.objects.create_user("race2@example.com", "correct-horse-battery")
    services.add_credit(user=user, amount_micros=40 * USD, kind=GrantKind.PURCHASED,
                        expires_at=None)
    purchase = tier(ladder, 4)

    results = run_concurrently(lambda i: award_tier(user=user.pk, tier=purchase), 20)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(1 for r in results if r.created) == 1
    assert {r.grant.pk for r in results} == {TierAward.objects.get(user=user).grant_id}
    assert_books_balance(user.pk)


def test_twenty_racing_purchase_signals_reward_a_referral_once(eager_tasks):
    referrer = User.objects.create_user("ref@example.com", "correct-horse-battery")
    friend = User.objects.create_user("friend@example.org", "correct-horse-battery")
    code = referrals.referral_code_for(user=referrer)
    referrals.attribute_referral(user=friend, code=code)
    services.add_credit(user=friend, amount_micros=10 * USD, kind=GrantKind.PURCHASED,
                        expires_at=None)

    results = run_concurrently(lambda i: triggers.evaluate_promotions(
        user_id=friend.pk, now=friend.date_joined + dt.timedelta(days=1)), 20)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(1 for r in results if r.referral.rewarded_now) == 1
    assert Referral.objects.get(referred=friend).status == ReferralStatus.REWARDED
    assert CreditGrant.objects.filter(kind=GrantKind.REFERRAL).count() == 2
    assert_books_balance(referrer.pk, friend.pk)
