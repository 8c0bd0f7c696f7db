"""Each milestone trigger at its boundary, from the ledger point where it became true."""

import datetime as dt

import pytest

from accounts.models import User
from credits import services
from credits.models import CreditGrant, GrantKind, TierAward
from credits.promotion import milestones
from credits.promotion.milestones import award_tier, evaluate_milestones, milestone_progress
from inference.services import record_first_token
from tests.books import USD, assert_books_balance
from tests.credits.milestones.conftest import tier

pytestmark = pytest.mark.django_db


def joined(email="t@example.com") -> User:
    return User.objects.create_user(email, "correct-horse-battery")


def spend(user, micros, at, tokens=0):
    """A paid call settled at `at`: a hold, then its capture (tokens on the hold); then the
    evaluation the worker runs after the commit."""
    hold = services.authorize(user=user.pk, amount_micros=micros, now=at,
                              allow_pending_promotion=False)
    services.capture(hold=hold, amount_micros=micros, tokens=tokens, now=at)
    evaluate_milestones(user=user.pk)


def credit(user, usd=10):
    """Credit that is not a purchase (so the first-purchase tier stays out of the way)."""
    services.add_credit(user=user, amount_micros=usd * USD, kind=GrantKind.ADJUSTMENT,
                        expires_at=None, now=user.date_joined)


def tier_grants(user):
    return CreditGrant.objects.filter(user=user, source_reference__startswith="tier:")


def test_first_token_tier_pays_todays_twenty_dollars_within_180_s(ladder):
    on_time, late = joined("a@example.com"), joined("b@example.com")
    record_first_token(user_id=on_time.pk, at=on_time.date_joined + dt.timedelta(seconds=180))
    record_first_token(user_id=late.pk, at=late.date_joined + dt.timedelta(seconds=181))
    grant = CreditGrant.objects.get(user=on_time, kind=GrantKind.PROMOTIONAL)
    assert grant.amount_micros == 20 * USD
    assert not CreditGrant.objects.filter(user=late).exists()


@pytest.mark.parametrize(("offset", "earned"), [(7 * 86400, True), (7 * 86400 + 1, False)])
def test_spend_tier_counts_calls_up_to_the_last_second_of_its_window(ladder, fund, offset,
                                                                      earned):
    user = joined()
    credit(user)
    deadline = user.date_joined + dt.timedelta(seconds=offset)
    spend(user, USD // 2, user.date_joined + dt.timedelta(days=1))
    spend(user, USD // 2, deadline)  # this call reaches $1
    assert tier_grants(user).filter(source_reference=f"tier:{tier(ladder, 3).pk}").exists() \
        is earned
    if earned:
        award = TierAward.objects.get(user=user, tier=tier(ladder, 3))
        assert award.triggered_at == deadline and award.amount_micros == 3 * USD
    assert_books_balance(user.pk)


def test_spend_one_micro_short_earns_nothing(ladder, fund):
    user = joined()
    credit(user)
    spend(user, USD - 1, user.date_joined + dt.timedelta(days=1))
    assert evaluate_milestones(user=user) == []
    assert milestone_progress(user=user).next is not None
    assert not tier_grants(user).exists()


@pytest.mark.parametrize(("tokens", "earned"), [(99_999, False), (100_000, True)])
def test_tokens_tier_at_its_threshold(ladder, fund, tokens, earned):
    user = joined()
    credit(user)
    spend(user, 1000, user.date_joined + dt.timedelta(hours=1), tokens=tokens - 1)
    spend(user, 1000, user.date_joined + dt.timedelta(hours=2), tokens=1)
    assert TierAward.objects.filter(user=user, tier=tier(ladder, 2)).exists() is earned


def test_a_late_evaluation_still_awards_from_the_ledger_point(ladder, fund):
    """The crossing call was inside the window; the evaluation runs days after it ended."""
    user = joined()
    credit(user)
    at = user.date_joined + dt.timedelta(days=6)
    services.add_credit(user=user, amount_micros=2 * USD, kind=GrantKind.ADJUSTMENT,
                        expires_at=None, now=at)
    hold = services.authorize(user=user.pk, amount_micros=2 * USD, now=at,
                              allow_pending_promotion=False)
    services.capture(hold=hold, amount_micros=2 * USD, now=at)  # no evaluation: worker down
    result = award_tier(user=user.pk, tier=tier(ladder, 3),
                        now=user.date_joined + dt.timedelta(days=20))
    assert result.grant is not None
    assert TierAward.objects.get(user=user, tier=tier(ladder, 3)).triggered_at == at


@pytest.mark.parametrize(("purchase_usd", "bonus"), [(10, 5 * USD), (100, 10 * USD)])
def test_first_purchase_is_matched_up_to_the_cap(ladder, fund, purchase_usd, bonus):
    user = joined()
    fund(user, purchase_usd)  # a PURCHASED grant: the ledger's record of the purchase
    evaluate_milestones(user=user)
    assert TierAward.objects.get(user=user, tier=tier(ladder, 4)).amount_micros == bonus


def test_first_purchase_after_its_window_earns_nothing(ladder, fund):
    user = joined()
    services.add_credit(user=user, amount_micros=10 * USD, kind=GrantKind.PURCHASED,
                        now=user.date_joined + dt.timedelta(days=30, seconds=1))
    evaluate_milestones(user=user)
    assert not TierAward.objects.filter(user=user).exists()


@pytest.mark.parametrize(("seconds", "earned"), [(86400, True), (86401, False)])
def test_email_verified_tier_at_its_boundary(ladder, seconds, earned):
    user = joined()
    User.objects.filter(pk=user.pk).update(
        email_verified_at=user.date_joined + dt.timedelta(seconds=seconds))
    evaluate_milestones(user=user)
    assert TierAward.objects.filter(user=user, tier=tier(ladder, 5)).exists() is earned


def test_the_kill_switch_stops_every_tier(ladder, fund):
    user = joined()
    ladder.is_active = False
    ladder.save()
    credit(user)
    assert evaluate_milestones(user=user) == []


def test_a_user_withheld_by_the_velocity_limits_earns_no_tier(ladder, fund):
    user = joined()
    User.objects.filter(pk=user.pk).update(promotion_eligible=False,
                                           promotion_withheld_reason="Too many sign-ups")
    credit(user)
    assert evaluate_milestones(user=user) == []


def test_the_spend_cap_applies_to_tiers_and_pauses_the_promotion(ladder, fund, settings):
    settings.PROMOTION_CAP_USD_PER_HOUR = "12"
    first, second = joined("c1@example.com"), joined("c2@example.com")
    fund(first, 100)
    fund(second, 100)
    assert len(evaluate_milestones(user=first)) == 1  # $10 match
    assert evaluate_milestones(user=second) == []  # $10 more would pass $12
    ladder.refresh_from_db()
    assert ladder.is_active is False and "PROMOTION_CAP_USD_PER_HOUR" in ladder.paused_reason


def test_tier_credit_waits_for_verification_when_required(ladder, fund, settings):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = joined()
    fund(user, 10)
    (grant,) = evaluate_milestones(user=user)
    assert grant.awaiting_verification is True


def test_progress_shows_the_next_milestone(ladder, fund):
    user = joined()
    credit(user)
    spend(user, USD // 4, user.date_joined + dt.timedelta(hours=1), tokens=25_000)
    user.refresh_from_db()
    progress = milestone_progress(user=user, now=user.date_joined + dt.timedelta(minutes=1))
    assert progress.next.label == "First token within 3 minutes of signing up"
    tokens = next(m for m in progress.milestones if m.unit == "tokens")
    assert (tokens.current, tokens.percent) == (25_000, 25)
    assert tokens.progress_display == "25,000 of 100,000 tokens"


def test_a_paid_call_evaluates_only_while_a_usage_tier_is_open(ladder, fund):
    user = joined()
    credit(user)
    assert milestones.has_open_usage_tier(user.pk) is True
    spend(user, 2 * USD, user.date_joined + dt.timedelta(hours=1), tokens=200_000)
    evaluate_milestones(user=user)
    assert milestones.has_open_usage_tier(user.pk) is False


def test_dashboard_and_onboarding_show_the_next_milestone_and_its_progress(ladder, client):
    user = joined()
    credit(user)
    spend(user, USD // 4, user.date_joined + dt.timedelta(minutes=1), tokens=25_000)
    record_first_token(user_id=user.pk, at=user.date_joined + dt.timedelta(seconds=30))
    client.force_login(user)
    for url in ("/billing/", "/accounts/onboarding/"):
        html = client.get(url).content.decode()
        assert "Next: 100,000 tokens within 7 days" in html, url
        assert "25,000 of 100,000 tokens" in html
        assert 'value="25"' in html


def test_the_paid_call_that_crosses_the_threshold_awards_the_tier_after_commit(
        ladder, eager_tasks, django_capture_on_commit_callbacks):
    user = joined()
    credit(user)
    at = user.date_joined + dt.timedelta(hours=1)
    hold = services.authorize(user=user.pk, amount_micros=2 * USD, now=at,
                              allow_pending_promotion=False)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.capture(hold=hold, amount_micros=2 * USD, tokens=10, now=at)
    assert len(callbacks) == 1  # one evaluation enqueued by name
    award = TierAward.objects.get(user=user, tier=tier(ladder, 3))
    assert award.triggered_at == at and award.grant.amount_micros == 3 * USD


def test_without_usage_tiers_a_paid_call_enqueues_nothing(db, fund,
                                                          django_capture_on_commit_callbacks):
    user = joined()
    fund(user, 5)
    with django_capture_on_commit_callbacks() as callbacks:
        services.use_credits(user=user, amount_micros=USD)
    assert callbacks == []
