"""A paid call asks whether any usage tier exists (TOKENS, SPEND): the process remembers the
answer, so a paid call with no such promotion costs no cache or database round trip, and a
tier saved here is noticed by the next call."""

import pytest

from credits.models import PromotionTier
from credits.promotion import milestones

pytestmark = pytest.mark.django_db


class CountingCache:
    def __init__(self, cache):
        self.cache, self.gets = cache, 0

    def get(self, *args, **kwargs):
        self.gets += 1
        return self.cache.get(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.cache, name)


@pytest.fixture
def counting_cache(monkeypatch):
    milestones.forget_usage_tiers()
    cache = CountingCache(milestones.cache)
    monkeypatch.setattr(milestones, "cache", cache)
    return cache


def test_paid_calls_remember_that_no_usage_tier_exists(counting_cache, django_assert_num_queries):
    PromotionTier.objects.filter(trigger__in=milestones.USAGE_TRIGGERS).delete()
    assert milestones.usage_tiers_exist() is False

    with django_assert_num_queries(0):
        answers = [milestones.usage_tiers_exist() for _ in range(50)]

    assert answers == [False] * 50
    assert counting_cache.gets == 1  # the first call only


def test_a_usage_tier_saved_in_this_process_is_noticed_once_committed(
        counting_cache, ladder, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        PromotionTier.objects.filter(trigger__in=milestones.USAGE_TRIGGERS).delete()
    assert milestones.usage_tiers_exist() is False

    with django_capture_on_commit_callbacks(execute=True):
        PromotionTier.objects.create(tier_list=ladder.tier_list, position=9, trigger="SPEND",
                                     window_seconds=86400, threshold=1_000_000,
                                     amount_micros=1_000_000)
        # Not yet committed: a paid call now must not learn an answer to remember.
        assert milestones.usage_tiers_exist() is False

    assert milestones.usage_tiers_exist() is True


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_failing_database_cache_does_not_cost_a_paid_call_its_charge(settings, make_user, fund):
    """The embedded default caches in the database, on the ledger's own connection: a cache
    query that fails inside the capture (its table missing, say) must not abort the
    transaction that charges the call."""
    from credits import services

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache",
                                   "LOCATION": "no_such_cache_table"}}
    milestones.forget_usage_tiers()
    user = make_user(promotion_eligible=False)
    fund(user, 1)
    hold = services.authorize(user=user, amount_micros=1_000, reference="call-1")

    services.capture(hold=hold, amount_micros=700, tokens=7, description="call-1")

    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (1_000_000 - 700, 0)
