"""Real threads against real PostgreSQL: no overspending, no lost update."""

import datetime as dt
import random

import pytest
from django.core.management import call_command
from django.utils import timezone

from credits import services
from credits.exceptions import CreditError, InsufficientCredits
from credits.models import GrantKind, HoldStatus, LedgerEntry
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_fifty_concurrent_one_dollar_debits_against_twenty_dollars_spend_exactly_twenty(make_user):
    user = make_user()
    services.add_credit(user=user, amount_micros=20 * USD, kind=GrantKind.PURCHASED)

    results = run_concurrently(
        lambda i: services.use_credits(user=user.pk, amount_micros=USD, reference=f"req-{i}"), 50)

    succeeded = [r for r in results if isinstance(r, services.DebitResult)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(succeeded), len(refused)) == (20, 30)
    user.refresh_from_db()
    assert user.credit_balance == 0
    assert_books_balance(user.pk)


def test_holds_captures_and_expiry_racing_debits_never_go_negative(make_user):
    users = [make_user() for _ in range(3)]
    now = timezone.now()
    for user in users:
        services.add_credit(user=user, amount_micros=3 * USD, kind=GrantKind.PROMOTIONAL,
                            expires_at=now + dt.timedelta(seconds=2), now=now)
        services.add_credit(user=user, amount_micros=2 * USD, kind=GrantKind.PURCHASED, now=now)
    later = now + dt.timedelta(seconds=3)  # the promotional lots are past expiry for some calls

    def act(i: int):
        user = users[i % len(users)]
        rng = random.Random(i)
        moment = later if i % 2 else now
        kind = i % 4
        if kind == 0:
            return services.expire_credits(now=later)
        if kind == 1:
            return services.use_credits(user=user.pk, amount_micros=rng.randint(1, USD), now=moment)
        hold = services.authorize(user=user.pk, amount_micros=rng.randint(1, 2 * USD), now=moment)
        if kind == 2:
            return services.capture(hold=hold, amount_micros=rng.randint(0, hold.amount_micros),
                                    now=later)
        return services.release(hold=hold, now=later)

    results = run_concurrently(act, 40)

    unexpected = [r for r in results if isinstance(r, Exception) and not isinstance(r, CreditError)]
    assert unexpected == []
    # An expiry run goes on past a user that fails (a deadlock, say): none may have.
    assert [r.failed for r in results if isinstance(r, services.ExpiryRun)] == [()] * 10
    services.expire_credits(now=later)
    for user in users:
        user.refresh_from_db()
        assert 0 <= user.credit_held <= user.credit_balance <= 2 * USD
    assert not LedgerEntry.objects.filter(balance_after_micros__lt=0).exists()
    assert_books_balance()
    call_command("credits_verify")


def test_concurrent_expiry_runs_expire_each_grant_once(make_user):
    now = timezone.now()
    users = [make_user() for _ in range(10)]
    for user in users:
        services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PROMOTIONAL,
                            expires_at=now + dt.timedelta(seconds=1), now=now)
    after = now + dt.timedelta(seconds=2)

    results = run_concurrently(lambda i: services.expire_credits(now=after), 4)

    assert sum(r.expired for r in results) == 10 and all(r.failed == () for r in results)
    assert LedgerEntry.objects.filter(entry_type="EXPIRY").count() == 10
    assert_books_balance()


def test_a_journal_write_racing_the_stale_hold_sweep_is_either_seen_or_refused(make_user):
    # Twelve calls that began an hour ago and never journaled; each writes its journal at the
    # moment two sweeps run. The sweep re-reads the journal under the hold's lock: a call
    # whose write went through first is left alone; one the sweep settled first is refused.
    users = [make_user() for _ in range(12)]
    holds = []
    for user in users:
        services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PURCHASED)
        holds.append(services.authorize(user=user, amount_micros=USD // 2,
                                        now=timezone.now() - dt.timedelta(hours=1)))

    def act(i: int):
        if i >= len(holds):
            return services.release_stale_holds(older_than_seconds=60)
        return services.record_progress(hold=holds[i], delivered_micros=1_000, tokens=5)

    results = run_concurrently(act, len(holds) + 2)

    sweeps = results[len(holds):]
    assert all(isinstance(r, services.HoldSweep) and r.failed == () for r in sweeps), sweeps
    settled = {s.hold_id for r in sweeps for s in r.settled}
    assert sum(len(r.settled) for r in sweeps) == len(settled)  # each settled once
    for hold, wrote in zip(holds, results, strict=False):
        hold.refresh_from_db()
        # Journaled first: alive, untouched. Swept first: released, the late write refused.
        assert (hold.status == HoldStatus.ACTIVE) == wrote == (hold.pk not in settled)
        assert hold.status in (HoldStatus.ACTIVE, HoldStatus.RELEASED)
    assert_books_balance()
