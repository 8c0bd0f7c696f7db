"""Holds: reserve before work whose cost is known afterwards, then capture or release."""

import datetime as dt

import pytest
from django.utils import timezone

from credits import services
from credits.exceptions import CaptureExceedsHold, HoldNotActive, InsufficientCredits
from credits.models import CreditHold, EntryType, GrantKind, HoldStatus, LedgerEntry
from credits.selectors import get_user_credits
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.django_db


def credits_of(user, now=None):
    return get_user_credits(user=user, now=now)


def test_a_hold_lowers_available_but_not_the_balance(user, fund):
    fund(user, 10)
    services.authorize(user=user, amount_micros=3 * USD, reference="req-1")
    summary = credits_of(user)
    assert (summary.balance_micros, summary.held_micros, summary.available_micros) == (
        10 * USD, 3 * USD, 7 * USD)
    with pytest.raises(InsufficientCredits):
        services.use_credits(user=user, amount_micros=8 * USD)
    assert_books_balance(user.pk)


def test_capture_charges_the_actual_cost_and_releases_the_rest(user, fund):
    fund(user, 10)
    hold = services.authorize(user=user, amount_micros=3 * USD, reference="req-1")
    services.capture(hold=hold, amount_micros=1_234_567)
    summary = credits_of(user)
    assert (summary.balance_micros, summary.held_micros) == (10 * USD - 1_234_567, 0)
    hold.refresh_from_db()
    assert (hold.status, hold.captured_micros) == (HoldStatus.CAPTURED, 1_234_567)
    capture_entry = LedgerEntry.objects.get(hold=hold, entry_type=EntryType.CAPTURE)
    assert capture_entry.reference == "req-1"
    assert_books_balance(user.pk)


def test_a_capture_above_the_hold_is_refused_with_nothing_written(user, fund):
    fund(user, 10)
    hold = services.authorize(user=user, amount_micros=USD)
    before = LedgerEntry.objects.count()
    with pytest.raises(CaptureExceedsHold):
        services.capture(hold=hold, amount_micros=USD + 1)
    assert LedgerEntry.objects.count() == before
    hold.refresh_from_db()
    assert hold.status == HoldStatus.ACTIVE


def test_release_returns_everything_and_a_second_release_is_refused(user, fund):
    fund(user, 10)
    hold = services.authorize(user=user, amount_micros=4 * USD)
    services.release(hold=hold)
    assert credits_of(user).available_micros == 10 * USD
    before = LedgerEntry.objects.count()
    with pytest.raises(HoldNotActive):
        services.release(hold=hold)
    with pytest.raises(HoldNotActive):
        services.capture(hold=hold, amount_micros=1)
    assert LedgerEntry.objects.count() == before
    assert_books_balance(user.pk)


def test_capturing_twice_with_the_same_amount_is_a_harmless_replay(user, fund):
    fund(user, 10)
    hold = services.authorize(user=user, amount_micros=USD)
    services.capture(hold=hold, amount_micros=500)
    services.capture(hold=hold, amount_micros=500)
    assert credits_of(user).balance_micros == 10 * USD - 500
    with pytest.raises(HoldNotActive):
        services.capture(hold=hold, amount_micros=600)


def test_a_hold_spread_over_grants_is_charged_soonest_expiring_first(user):
    now = timezone.now()
    services.add_credit(user=user, amount_micros=5 * USD, kind=GrantKind.PURCHASED, now=now)
    soon = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PROMOTIONAL, now=now)
    hold = services.authorize(user=user, amount_micros=3 * USD, now=now)
    services.capture(hold=hold, amount_micros=2 * USD, now=now)
    soon.refresh_from_db()
    assert soon.remaining_micros == 0
    assert credits_of(user, now).balance_micros == 4 * USD
    assert_books_balance(user.pk)


def test_a_capture_succeeds_even_if_the_held_grant_expired_meanwhile(user):
    now = timezone.now()
    grant = services.add_credit(user=user, amount_micros=2 * USD, kind=GrantKind.PROMOTIONAL,
                                expires_at=now + dt.timedelta(seconds=30), now=now)
    hold = services.authorize(user=user, amount_micros=USD, now=now)
    after_expiry = now + dt.timedelta(minutes=1)
    # The expiry task runs while the call is in flight: only the unheld part expires.
    assert services.expire_credits(now=after_expiry).expired == 1
    grant.refresh_from_db()
    assert (grant.remaining_micros, grant.held_micros) == (USD, USD)

    services.capture(hold=hold, amount_micros=400_000, now=after_expiry)
    grant.refresh_from_db()
    # The captured part was charged; the released rest expired right away.
    assert (grant.remaining_micros, grant.held_micros) == (0, 0)
    types = list(LedgerEntry.objects.filter(hold=hold).order_by("id")
                 .values_list("entry_type", "amount_micros"))
    assert types == [(EntryType.HOLD, 0), (EntryType.CAPTURE, -400_000), (EntryType.EXPIRY, -600_000)]
    assert credits_of(user, after_expiry).balance_micros == 0
    assert_books_balance(user.pk)


def test_a_hold_on_a_voided_grant_is_voided_when_it_is_released(user, fund):
    grant = fund(user, 3)
    hold = services.authorize(user=user, amount_micros=USD)
    services.void_grant(grant=grant, reason="chargeback")
    assert credits_of(user).balance_micros == USD  # the held dollar stays until the call settles
    services.release(hold=hold)
    assert credits_of(user).balance_micros == 0
    assert_books_balance(user.pk)


def test_stale_holds_are_released_and_fresh_ones_kept(user, fund):
    fund(user, 10)
    now = timezone.now()
    stale = services.authorize(user=user, amount_micros=USD, now=now - dt.timedelta(hours=1))
    fresh = services.authorize(user=user, amount_micros=USD, now=now)
    assert len(services.release_stale_holds(older_than_seconds=900, now=now).settled) == 1
    assert CreditHold.objects.get(pk=stale.pk).status == HoldStatus.RELEASED
    assert CreditHold.objects.get(pk=fresh.pk).status == HoldStatus.ACTIVE
    assert services.release_stale_holds(older_than_seconds=900, now=now).settled == ()
    assert_books_balance(user.pk)


def test_authorize_is_idempotent_on_its_key(user, fund):
    fund(user, 10)
    first = services.authorize(user=user, amount_micros=USD, reference="r", idempotency_key="h1")
    again = services.authorize(user=user, amount_micros=USD, reference="r", idempotency_key="h1")
    assert again.pk == first.pk
    assert credits_of(user).held_micros == USD
