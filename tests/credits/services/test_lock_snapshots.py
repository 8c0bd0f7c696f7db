"""A hold, a debit and a settlement each lock the account and read its grants in one statement.
A statement that had to wait for the account's lock read the grants as they were before it
waited: what the lock's holder wrote meanwhile must still be seen (credits.services.locks)."""

import datetime as dt
import threading
import time

import pytest
from django.db import connection, transaction

from credits import services
from credits.models import CreditHold, HoldStatus
from inference.services import record_first_token
from tests.books import USD, assert_books_balance

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _wait_until_someone_waits_for_a_lock(timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return
        time.sleep(0.01)
    raise AssertionError("nobody waited for the lock")


def _while_holding_the_account(write, then):
    """Run `write` in a transaction kept open in another thread; meanwhile start `then` in a
    third thread, wait until it waits for the lock, commit, and return what `then` returned."""
    written, release, outcome = threading.Event(), threading.Event(), {}

    def holder():
        try:
            with transaction.atomic():
                write()
                written.set()
                assert release.wait(10)
        finally:
            connection.close()

    def waiter():
        try:
            outcome["result"] = then()
        except Exception as exc:
            outcome["result"] = exc
        finally:
            connection.close()

    first = threading.Thread(target=holder)
    first.start()
    assert written.wait(10)
    second = threading.Thread(target=waiter)
    second.start()
    _wait_until_someone_waits_for_a_lock()
    release.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive()
    return outcome["result"]


def test_a_hold_that_waited_for_the_account_can_use_the_credit_bought_meanwhile(make_user, fund):
    user = make_user(promotion_eligible=False)
    fund(user, 1)

    hold = _while_holding_the_account(
        write=lambda: fund(user, 10),
        then=lambda: services.authorize(user=user.pk, amount_micros=5 * USD, reference="r"))

    assert isinstance(hold, CreditHold), hold
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (11 * USD, 5 * USD)
    assert_books_balance(user.pk)


def test_a_debit_that_waited_for_the_account_can_use_the_credit_bought_meanwhile(make_user, fund):
    user = make_user(promotion_eligible=False)
    fund(user, 1)

    result = _while_holding_the_account(
        write=lambda: fund(user, 10),
        then=lambda: services.use_credits(user=user.pk, amount_micros=5 * USD))

    assert not isinstance(result, Exception), result
    user.refresh_from_db()
    assert user.credit_balance == 6 * USD
    assert_books_balance(user.pk)


@pytest.mark.parametrize("charge", [3 * USD, None])
def test_a_settlement_that_waited_for_the_promotion_settles_the_part_moved_onto_it(
        make_user, fund, settings, charge):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = False
    user = make_user()
    fund(user, 1)
    now = user.date_joined + dt.timedelta(seconds=30)
    hold = services.authorize(user=user.pk, amount_micros=5 * USD, reference="r", now=now)
    assert hold.pending_promotion_micros == 4 * USD

    # The first token's promotion moves the pending part onto the new $20 grant while the
    # settlement waits for the account.
    settle = (lambda: services.capture(hold=hold, amount_micros=charge, now=now)) if charge else (
        lambda: services.release(hold=hold, now=now))
    result = _while_holding_the_account(
        write=lambda: record_first_token(user_id=user.pk, at=now), then=settle)

    assert not isinstance(result, Exception), result
    hold.refresh_from_db()
    assert hold.status == (HoldStatus.CAPTURED if charge else HoldStatus.RELEASED)
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (21 * USD - (charge or 0), 0)
    assert_books_balance(user.pk)


def test_a_hold_waiting_for_the_account_holds_no_grant_meanwhile(make_user, fund):
    """The one statement keeps the ledger's lock order (account, then grants): one that locked
    a grant first could deadlock a service holding the account and waiting for that grant."""
    user = make_user(promotion_eligible=False)
    grant = fund(user, 10)
    grant_free = {}
    waiting = threading.Thread(target=lambda: grant_free.setdefault("hold", _try_authorize()))

    def lock_the_account_then_try_the_grant():
        services.locks.lock_account(user.pk)
        waiting.start()
        _wait_until_someone_waits_for_a_lock()
        with connection.cursor() as cursor:  # the waiting hold must not have locked it
            cursor.execute("SAVEPOINT probe")
            try:
                cursor.execute("SET LOCAL lock_timeout = '1ms'")
                cursor.execute("SELECT 1 FROM credits_creditgrant WHERE id = %s "
                               "FOR NO KEY UPDATE", [grant.pk])
                grant_free["probe"] = True
            except Exception:
                grant_free["probe"] = False
            cursor.execute("ROLLBACK TO SAVEPOINT probe")

    def _try_authorize():
        try:
            return services.authorize(user=user.pk, amount_micros=USD, reference="r")
        finally:
            connection.close()

    with transaction.atomic():
        lock_the_account_then_try_the_grant()
    waiting.join(10)
    assert not waiting.is_alive()
    assert grant_free["probe"] is True
    assert isinstance(grant_free["hold"], CreditHold)
    assert_books_balance(user.pk)
