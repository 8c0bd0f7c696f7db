"""Notifications: enqueued after commit, sent at most once per user and occurrence,
and the ledger and the API keep working when the broker is down."""

import datetime as dt
import logging

import pytest
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import create_api_key
from config.celery import app as celery_app
from credits import notifications, services, tasks
from credits.models import CreditGrant, GrantKind, Notification, NotificationEvent
from inference.services import record_first_token
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently
from tests.seeds import seed_demo_models

Event = NotificationEvent


def point_broker_at(url: str) -> None:
    """Reconfigure the Celery app's broker (settings are read once, at start)."""
    celery_app.conf.broker_url = url
    celery_app._pool = None  # kombu keeps one pool per URL; the app picks it up again
    celery_app.amqp._producer_pool = None


@pytest.fixture
def broker_down(settings):
    """REDIS_URL, the broker and the cache all point at a closed port."""
    closed = "redis://127.0.0.1:1/0"
    saved = celery_app.conf.broker_url, dict(celery_app.conf.broker_transport_options or {})
    settings.REDIS_URL = closed
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": closed,
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }}
    celery_app.conf.broker_transport_options = {
        **saved[1], "max_retries": 0, "socket_connect_timeout": 0.5}
    point_broker_at(closed)
    yield
    celery_app.conf.broker_transport_options = saved[1]
    point_broker_at(saved[0])


def sent(mailoutbox, event) -> list:
    subjects = {n.subject for n in Notification.objects.filter(event=event)}
    return [m for m in mailoutbox if m.subject in subjects]


# --- the promotion ----------------------------------------------------------------


def test_the_promotion_grant_is_emailed_once_after_commit(
        make_user, mailoutbox, django_capture_on_commit_callbacks, eager_tasks):
    user = make_user()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert record_first_token(user_id=user.pk)
    assert len(callbacks) == 1

    assert len(mailoutbox) == 1
    email = mailoutbox[0]
    assert email.to == [user.email]
    assert email.subject == "You earned $20.00 of free TokenBank credit"
    assert "$20.00" in email.body and "http" in email.body
    html, mimetype = email.alternatives[0]
    assert mimetype == "text/html" and "<strong>$20.00</strong>" in html
    note = Notification.objects.get(user=user)
    assert note.event == Event.PROMOTION_GRANTED and note.emailed_at is not None

    # Again, by hand and by the periodic catch-up: nothing more is sent.
    assert notifications.notify(user_id=user.pk, event=Event.PROMOTION_GRANTED) == []
    assert tasks.catch_up_notifications() == 0
    assert len(mailoutbox) == 1


def test_nothing_is_enqueued_when_the_granting_transaction_rolls_back(
        make_user, mailoutbox, django_capture_on_commit_callbacks, eager_tasks):
    user = make_user()

    with (django_capture_on_commit_callbacks(execute=True) as callbacks,
          pytest.raises(RuntimeError), transaction.atomic()):
        record_first_token(user_id=user.pk)
        raise RuntimeError("the request failed after the first token")

    assert callbacks == []
    assert mailoutbox == [] and not Notification.objects.exists()
    assert not CreditGrant.objects.filter(user=user).exists()


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_grant_sends_nothing_and_a_committed_one_sends_once(
        make_user, mailoutbox, eager_tasks):
    user = make_user()

    with pytest.raises(RuntimeError), transaction.atomic():
        record_first_token(user_id=user.pk)
        raise RuntimeError("rolled back")
    assert mailoutbox == [] and not Notification.objects.exists()

    assert record_first_token(user_id=user.pk)
    assert record_first_token(user_id=user.pk) is False
    assert [m.subject for m in mailoutbox] == ["You earned $20.00 of free TokenBank credit"]
    assert Notification.objects.filter(user=user).count() == 1


def test_a_promotion_whose_enqueue_was_lost_is_sent_by_the_catch_up(
        make_user, mailoutbox, django_capture_on_commit_callbacks):
    user = make_user()
    with django_capture_on_commit_callbacks(execute=False):  # the enqueue never happens
        record_first_token(user_id=user.pk)

    assert tasks.catch_up_notifications() == 1
    assert tasks.catch_up_notifications() == 0
    assert len(sent(mailoutbox, Event.PROMOTION_GRANTED)) == 1


# --- balance thresholds on the debit path --------------------------------------------


def test_crossing_the_low_balance_threshold_emails_once_per_top_up(
        user, fund, mailoutbox, django_capture_on_commit_callbacks, eager_tasks, settings):
    settings.LOW_BALANCE_THRESHOLD_USD = "1"
    fund(user, usd=5)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.use_credits(user=user, amount_micros=3_500_000)  # $1.50 left: above
    assert callbacks == []  # no crossing, no enqueue, no query
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.use_credits(user=user, amount_micros=750_000)  # $0.75: crossed
    assert len(callbacks) == 1
    assert [m.subject for m in mailoutbox] == ["Your TokenBank balance is low: $0.75"]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.use_credits(user=user, amount_micros=250_000)  # $0.50: already below
    assert callbacks == []

    fund(user, usd=2)  # $2.50
    with django_capture_on_commit_callbacks(execute=True):
        services.use_credits(user=user, amount_micros=2 * USD)  # $0.50 again
    assert [m.subject for m in mailoutbox][1:] == ["Your TokenBank balance is low: $0.50"]
    assert Notification.objects.filter(user=user, event=Event.LOW_BALANCE).count() == 2
    assert tasks.catch_up_notifications() == 0


def test_a_balance_spent_to_zero_is_announced_as_exhausted(
        user, fund, mailoutbox, django_capture_on_commit_callbacks, eager_tasks):
    fund(user, usd=5)
    hold = services.authorize(user=user, amount_micros=5 * USD, reference="call-1")

    with django_capture_on_commit_callbacks(execute=True):
        services.capture(hold=hold, amount_micros=5 * USD)

    assert [m.subject for m in mailoutbox] == ["Your TokenBank balance is used up"]
    assert list(Notification.objects.values_list("event", flat=True)) == [Event.BALANCE_EXHAUSTED]


def test_a_low_balance_notice_is_dropped_if_the_user_topped_up_before_it_was_sent(
        user, fund, mailoutbox, django_capture_on_commit_callbacks, eager_tasks):
    fund(user, usd=2)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.use_credits(user=user, amount_micros=1_500_000)
    fund(user, usd=10)

    for callback in callbacks:  # the worker gets to it after the top-up
        callback()

    assert mailoutbox == [] and not Notification.objects.exists()


def test_a_missed_low_balance_notice_is_sent_by_the_catch_up(user, fund, mailoutbox):
    fund(user, usd=2)
    services.use_credits(user=user, amount_micros=1_200_000)  # on_commit never runs here

    assert tasks.catch_up_notifications() == 1
    assert tasks.catch_up_notifications() == 0
    assert [m.subject for m in mailoutbox] == ["Your TokenBank balance is low: $0.80"]


# --- expiry ----------------------------------------------------------------------------


def test_credit_expiring_within_three_days_is_announced_once_per_grant(user, fund, mailoutbox):
    now = timezone.now()
    soon = fund(user, usd=10, kind=GrantKind.PROMOTIONAL, expires_at=now + dt.timedelta(days=2))
    fund(user, usd=5, kind=GrantKind.PROMOTIONAL, expires_at=now + dt.timedelta(days=4))
    spent = fund(user, usd=1, kind=GrantKind.PROMOTIONAL, expires_at=now + dt.timedelta(days=1))
    services.use_credits(user=user, amount_micros=USD)  # uses up `spent` (soonest first)

    assert tasks.notify_expiring_credits() == 1
    assert tasks.notify_expiring_credits() == 0

    spent.refresh_from_db()
    assert spent.remaining_micros == 0
    note = Notification.objects.get(event=Event.CREDITS_EXPIRING)
    assert note.grant == soon
    assert [m.subject for m in sent(mailoutbox, Event.CREDITS_EXPIRING)] == [
        f"$10.00 of your TokenBank credit expires on {soon.expires_at:%Y-%m-%d %H:%M} UTC"]


def test_expired_credit_is_announced_once_and_not_as_an_exhausted_balance(user, mailoutbox):
    granted_at = timezone.now() - dt.timedelta(days=31)
    services.add_credit(user=user, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                        now=granted_at)
    tasks.expire_credits()

    assert tasks.catch_up_notifications() == 1
    assert tasks.catch_up_notifications() == 0

    assert [m.subject for m in mailoutbox] == ["$20.00 of your TokenBank credit expired"]
    assert "$20.00 of your promotional credit reached its expiry date" in mailoutbox[0].body
    assert_books_balance(user.pk)


# --- at most once, under concurrency ----------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_send_a_notification_once(make_user, mailoutbox):
    user = make_user()
    record_first_token(user_id=user.pk)  # on_commit enqueue goes to the broker, unconsumed
    mailoutbox.clear()

    results = run_concurrently(
        lambda i: notifications.notify(user_id=user.pk, event=Event.PROMOTION_GRANTED), 6)

    assert sum(len(r) for r in results) == 1, results
    assert len(mailoutbox) == 1
    assert Notification.objects.filter(user=user).count() == 1


# --- the dashboard's read ----------------------------------------------------------------


def test_recent_notifications_lists_the_users_own_newest_first(make_user, fund, mailoutbox):
    user, other = make_user(), make_user()
    record_first_token(user_id=user.pk)
    services.use_credits(user=user, amount_micros=19_500_000)
    fund(other, usd=2)
    services.use_credits(user=other, amount_micros=1_500_000)
    assert tasks.catch_up_notifications() == 3

    listed = notifications.recent_notifications(user=user)

    assert [n.event for n in listed] == [Event.LOW_BALANCE, Event.PROMOTION_GRANTED]
    assert {n.user_id for n in listed} == {user.pk}
    assert all(n.summary and n.subject for n in listed)
    assert len(notifications.recent_notifications(user=user, limit=1)) == 1


# --- Redis down ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_api_answers_and_bills_with_redis_down_and_the_notice_catches_up_later(
        make_user, broker_down, mailoutbox, caplog, settings):
    seed_demo_models()  # a transactional test starts from empty tables
    user = make_user()  # just registered: the first token earns the promotion
    _key, secret = create_api_key(user=user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    caplog.set_level(logging.WARNING, logger="credits.notifications")
    response = client.post("/v1/chat/completions", {
        "model": "demo-small", "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 20}, format="json")

    assert response.status_code == 200, response.content
    charged = int(response["X-Credits-Charged"].replace(".", ""))
    user.refresh_from_db()
    assert user.promotion_claimed and charged > 0
    assert user.credit_balance == 20 * USD - charged
    assert_books_balance(user.pk)
    assert "Could not enqueue PROMOTION_GRANTED" in caplog.text
    assert mailoutbox == []

    # Redis is back: the periodic catch-up sends what the request could not enqueue.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    cache.clear()
    assert tasks.catch_up_notifications() == 1
    assert [m.subject for m in mailoutbox] == ["You earned $20.00 of free TokenBank credit"]


def test_a_catch_up_with_nothing_missed_costs_a_few_queries_whatever_the_users(
        make_user, fund, mailoutbox, django_assert_max_num_queries):
    for _ in range(5):
        who = make_user()
        fund(who, usd=2)
        services.use_credits(user=who, amount_micros=1_500_000)
    assert tasks.catch_up_notifications() == 5

    with django_assert_max_num_queries(4):
        assert tasks.catch_up_notifications() == 0
    assert len(mailoutbox) == 5


class RefusingEmailBackend:
    """An SMTP server that is down."""

    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("SMTP server down")


def test_a_failed_email_is_recorded_and_never_retried(make_user, settings, mailoutbox):
    settings.EMAIL_BACKEND = f"{__name__}.RefusingEmailBackend"
    user = make_user()
    record_first_token(user_id=user.pk)

    assert tasks.catch_up_notifications() == 1

    note = Notification.objects.get(user=user)
    assert note.emailed_at is None
    assert note.email_error == "ConnectionRefusedError: SMTP server down"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert tasks.catch_up_notifications() == 0
    assert mailoutbox == []
    # The dashboard still shows what happened.
    assert notifications.recent_notifications(user=user) == [note]
