"""The promotion's decisions and the sweeps' runs, counted for /metrics (this process)."""

import datetime as dt

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from credits import services, sweeps
from credits.promotion.award import apply_first_token_promotion
from tests.books import USD


def _count(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db(transaction=True)
def test_promotions_granted_and_refused_are_counted_with_a_short_reason(make_user):
    granted = _count("tokenbank_promotions_total", outcome="granted", reason="")
    late = _count("tokenbank_promotions_total", outcome="refused", reason="late")
    on_time = make_user(first_token_at=timezone.now())
    assert apply_first_token_promotion(user=on_time) is not None
    joined = timezone.now() - dt.timedelta(days=1)
    too_late = make_user(date_joined=joined, first_token_at=timezone.now())
    assert apply_first_token_promotion(user=too_late) is None
    assert _count("tokenbank_promotions_total", outcome="granted", reason="") == granted + 1
    assert _count("tokenbank_promotions_total", outcome="refused", reason="late") == late + 1


@pytest.mark.django_db
def test_a_stale_hold_sweep_counts_its_run_and_the_holds_it_settled(make_user, fund):
    user = make_user()
    fund(user, 2)
    services.authorize(user=user, amount_micros=USD, reference="call-dead",
                       now=timezone.now() - dt.timedelta(hours=1))
    runs = _count("tokenbank_sweep_runs_total", sweep="release_stale_holds")
    settled = _count("tokenbank_sweep_units_settled_total", sweep="release_stale_holds")
    sweeps.run_stale_hold_sweep(older_than_seconds=60)
    assert _count("tokenbank_sweep_runs_total", sweep="release_stale_holds") == runs + 1
    assert _count("tokenbank_sweep_units_settled_total", sweep="release_stale_holds") == settled + 1
    assert _count("tokenbank_sweep_units_failed_total", sweep="release_stale_holds") == 0
