"""The Celery doors of the credits app: expiry, stale holds, the schedule, a real worker."""

import datetime as dt
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from config.celery import app as celery_app
from credits import services, tasks
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    HoldStatus,
    LedgerEntry,
    Notification,
    NotificationEvent,
    SweepFailure,
)
from credits.services import grants as ledger_grants
from inference.services import record_first_token
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently


def expiring_grant(user, *, usd=10, expires_in=dt.timedelta(days=1), granted_ago=dt.timedelta(days=2)):
    """A grant made `granted_ago`, expiring `expires_in` after it was made."""
    granted_at = timezone.now() - granted_ago
    return services.add_credit(user=user, amount_micros=usd * USD, kind=GrantKind.PROMOTIONAL,
                               expires_at=granted_at + expires_in, now=granted_at)


def expiry_entries(grant) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(grant=grant, entry_type=EntryType.EXPIRY))


# --- configuration -----------------------------------------------------------------


def test_celery_reads_the_time_limits_serializer_and_schedule_from_settings():
    conf = celery_app.conf
    assert conf.task_time_limit == settings.CELERY_TASK_TIME_LIMIT == 300
    assert conf.task_soft_time_limit == settings.CELERY_TASK_SOFT_TIME_LIMIT == 240
    assert (conf.task_serializer, list(conf.accept_content)) == ("json", ["json"])
    assert conf.task_publish_retry is False
    scheduled = {entry["task"] for entry in conf.beat_schedule.values()}
    assert scheduled == {
        "credits.tasks.expire_credits", "credits.tasks.release_stale_holds",
        "credits.tasks.catch_up_notifications", "credits.tasks.notify_expiring_credits",
        "credits.tasks.void_unverified_promotions", "inference.tasks.purge_idempotency_records",
        "credits.tasks.reconcile_books",
    }
    assert scheduled <= set(celery_app.tasks)


@pytest.mark.parametrize("task", [tasks.expire_credits, tasks.release_stale_holds,
                                  tasks.send_notification, tasks.catch_up_notifications,
                                  tasks.notify_expiring_credits])
def test_idempotent_tasks_are_acknowledged_late_and_requeued_when_the_worker_dies(task):
    assert task.acks_late is True
    assert task.reject_on_worker_lost is True


# --- expiry ------------------------------------------------------------------------


def test_the_expiry_task_expires_a_grant_past_its_expiry(user):
    grant = expiring_grant(user)

    assert tasks.expire_credits() == 1

    user.refresh_from_db()
    assert user.credit_balance == 0
    assert [e.amount_micros for e in expiry_entries(grant)] == [-10 * USD]
    assert_books_balance(user.pk)


def test_running_the_expiry_task_twice_expires_each_grant_once(make_user):
    users = [make_user() for _ in range(3)]
    grants = [expiring_grant(u) for u in users] + [expiring_grant(users[0], usd=5)]

    assert tasks.expire_credits() == 4
    assert tasks.expire_credits() == 0

    assert [len(expiry_entries(g)) for g in grants] == [1, 1, 1, 1]
    assert_books_balance()


def test_a_grant_expiring_one_second_after_now_is_untouched(user):
    now = timezone.now()
    grant = services.add_credit(user=user, amount_micros=10 * USD, kind=GrantKind.PROMOTIONAL,
                                expires_at=now + dt.timedelta(seconds=1), now=now)

    assert tasks.expire_credits(now=now.isoformat()) == 0

    grant.refresh_from_db()
    assert grant.remaining_micros == 10 * USD and expiry_entries(grant) == []
    # One second later it goes.
    assert tasks.expire_credits(now=(now + dt.timedelta(seconds=1)).isoformat()) == 1


def test_a_partly_used_grant_expires_only_its_remainder(user):
    grant = expiring_grant(user, expires_in=dt.timedelta(days=2) - dt.timedelta(hours=1))
    services.use_credits(user=user, amount_micros=3_250_000, reference="call-1",
                         now=timezone.now() - dt.timedelta(hours=2))

    tasks.expire_credits()

    assert [e.amount_micros for e in expiry_entries(grant)] == [-6_750_000]
    user.refresh_from_db()
    assert user.credit_balance == 0
    assert_books_balance(user.pk)


def test_credit_held_by_an_in_flight_call_is_not_lost_to_it(user):
    grant = expiring_grant(user, expires_in=dt.timedelta(days=2) - dt.timedelta(hours=1))
    hold = services.authorize(user=user, amount_micros=4 * USD, reference="call-1",
                              now=timezone.now() - dt.timedelta(hours=2))

    tasks.expire_credits()

    # Only the unheld part expired; the call can still be charged what it reserved.
    assert [e.amount_micros for e in expiry_entries(grant)] == [-6 * USD]
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (4 * USD, 4 * USD)
    services.capture(hold=hold, amount_micros=2_500_000)
    user.refresh_from_db()
    # The captured part was charged; the released rest of the expired grant went too.
    assert (user.credit_balance, user.credit_held) == (0, 0)
    assert -sum(e.amount_micros for e in expiry_entries(grant)) == 7_500_000
    assert_books_balance(user.pk)


def test_an_expiry_run_goes_on_past_failing_users_and_a_rerun_expires_each_grant_once(
        make_user, monkeypatch, caplog):
    users = [make_user() for _ in range(6)]
    grants = [expiring_grant(u) for u in users]
    real_expire_user = ledger_grants._expire_user
    calls = {"n": 0}

    def fail_after_three_users(user_id, now):
        calls["n"] += 1
        if calls["n"] in (4, 5):
            raise RuntimeError("database hiccup")
        return real_expire_user(user_id, now)

    monkeypatch.setattr(ledger_grants, "_expire_user", fail_after_three_users)
    # Two users fail; each user is its own transaction, so the run goes on past them.
    assert tasks.expire_credits() == 4
    assert sum(len(expiry_entries(g)) for g in grants) == 4
    assert caplog.text.count("failed; going on with the others") == 2
    assert SweepFailure.objects.count() == 2

    monkeypatch.setattr(ledger_grants, "_expire_user", real_expire_user)
    assert tasks.expire_credits() == 2
    assert tasks.expire_credits() == 0

    assert [len(expiry_entries(g)) for g in grants] == [1] * 6
    assert all(u.credit_balance == 0 for u in type(users[0]).objects.filter(pk__in=[u.pk for u in users]))
    assert not SweepFailure.objects.exists()
    assert_books_balance()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_expiry_runs_at_once_expire_each_grant_once(make_user):
    users = [make_user() for _ in range(8)]
    grants = [expiring_grant(u, usd=i + 1) for i, u in enumerate(users)]
    grants += [expiring_grant(u, usd=2, expires_in=dt.timedelta(days=1, hours=5)) for u in users[:4]]

    results = run_concurrently(lambda i: tasks.expire_credits(), 2)

    assert sorted(results)[1] > 0 and sum(results) == len(grants), results
    assert [len(expiry_entries(g)) for g in grants] == [1] * len(grants)
    assert set(CreditGrant.objects.values_list("remaining_micros", flat=True)) == {0}
    assert_books_balance()


def test_the_expire_credits_command_runs_the_same_service(user):
    grant = expiring_grant(user)
    past = (timezone.now() - dt.timedelta(days=3)).isoformat()

    call_command("expire_credits", f"--now={past}")
    assert expiry_entries(grant) == []

    call_command("expire_credits")
    call_command("expire_credits")
    assert len(expiry_entries(grant)) == 1
    call_command("credits_verify")


def test_the_expire_credits_command_refuses_a_moment_in_the_future(user):
    grant = expiring_grant(user, expires_in=dt.timedelta(days=5))  # three days from now
    future = (timezone.now() + dt.timedelta(days=365)).isoformat()
    with pytest.raises(CommandError, match="in the future"):
        call_command("expire_credits", f"--now={future}")
    assert expiry_entries(grant) == []


# --- stale holds ---------------------------------------------------------------------


def test_the_stale_hold_task_releases_only_holds_older_than_the_setting(user, fund, settings):
    settings.STALE_HOLD_SECONDS = 600
    fund(user, usd=10)
    old = services.authorize(user=user, amount_micros=3 * USD, reference="died",
                             now=timezone.now() - dt.timedelta(seconds=601))
    fresh = services.authorize(user=user, amount_micros=2 * USD, reference="running")

    assert tasks.release_stale_holds() == 1
    assert tasks.release_stale_holds() == 0

    old.refresh_from_db()
    fresh.refresh_from_db()
    assert (old.status, fresh.status) == (HoldStatus.RELEASED, HoldStatus.ACTIVE)
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (10 * USD, 2 * USD)
    assert_books_balance(user.pk)


# --- a real worker on the real broker --------------------------------------------------


@pytest.fixture
def redis_worker(transactional_db):
    """A Celery worker thread consuming from the real Redis (REDIS_URL)."""
    if not settings.REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL=redis://... (CI does)")
    celery_app.control.purge()  # leftovers of earlier runs
    with start_worker(celery_app, pool="solo", concurrency=1, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=15):
        yield


def wait_for(condition, *, attempts=300, pause=0.1):
    for _ in range(attempts):
        if condition():
            return True
        time.sleep(pause)
    return False


def queue_drained() -> bool:
    """Nothing waiting in Redis and nothing taken but unacknowledged (acks_late)."""
    with celery_app.connection_for_read() as conn:
        redis = conn.default_channel.client
        return redis.llen("celery") == 0 and redis.hlen("unacked") == 0


def test_a_real_worker_expires_a_grant_past_its_expiry_and_the_books_agree(make_user, redis_worker):
    user = make_user()
    grant = expiring_grant(user, usd=7)
    kept = services.add_credit(user=user, amount_micros=2 * USD, kind=GrantKind.PURCHASED)

    tasks.expire_credits.delay()

    assert wait_for(lambda: expiry_entries(grant)), "the worker never expired the grant"
    user.refresh_from_db()
    assert user.credit_balance == 2 * USD
    kept.refresh_from_db()
    assert kept.remaining_micros == 2 * USD
    call_command("credits_verify")


def test_a_committed_promotion_reaches_a_real_worker_through_redis_and_is_emailed_once(
        make_user, redis_worker, mailoutbox):
    user = make_user()

    assert record_first_token(user_id=user.pk)  # commits; on_commit publishes to Redis

    assert wait_for(lambda: Notification.objects.filter(user=user, emailed_at__isnull=False)
                    .exists()), "the worker never sent the promotion notice"
    tasks.send_notification.delay(user.pk, NotificationEvent.PROMOTION_GRANTED)  # a redelivery
    tasks.catch_up_notifications.delay()
    assert wait_for(queue_drained), "the worker never finished the redelivered tasks"
    assert [m.subject for m in mailoutbox] == ["You earned $20.00 of free TokenBank credit"]
