"""One bad unit does not stop a sweep: each user (expiry) and each hold (stale holds) is its
own unit of work; a unit that keeps failing is listed for staff and emailed once."""

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from credits import services, tasks
from credits.models import EntryType, GrantKind, HoldStatus, LedgerEntry, Sweep, SweepFailure
from credits.services import grants as ledger_grants
from credits.services import holds as ledger_holds
from tests.books import USD, assert_books_balance


def expired_grant(user, usd=5):
    granted_at = timezone.now() - dt.timedelta(days=2)
    return services.add_credit(user=user, amount_micros=usd * USD, kind=GrantKind.PROMOTIONAL,
                               expires_at=granted_at + dt.timedelta(days=1), now=granted_at)


def dead_hold(user, usd=1):
    """A hold whose call never wrote a journal and began an hour ago."""
    return services.authorize(user=user, amount_micros=usd * USD, reference=f"call-{user.pk}",
                              now=timezone.now() - dt.timedelta(hours=1))


@pytest.fixture
def broken_expiry_for(monkeypatch):
    """A set of user ids whose expiry raises, as a corrupt row would."""
    broken: set[int] = set()
    real = ledger_grants._expire_user

    def expire_user(user_id, now):
        if user_id in broken:
            raise RuntimeError(f"corrupt grant row of user {user_id}")
        return real(user_id, now)

    monkeypatch.setattr(ledger_grants, "_expire_user", expire_user)
    return broken


@pytest.fixture
def broken_settlement_for(monkeypatch):
    """A set of user ids whose holds raise when settled."""
    broken: set[int] = set()
    real = ledger_holds._settle

    def settle(account, hold, **kwargs):
        if hold.user_id in broken:
            raise RuntimeError(f"corrupt hold {hold.pk}")
        return real(account, hold, **kwargs)

    monkeypatch.setattr(ledger_holds, "_settle", settle)
    return broken


def test_a_user_whose_expiry_fails_does_not_stop_the_others(make_user, broken_expiry_for, caplog):
    first, second, third = (make_user() for _ in range(3))
    grants = [expired_grant(u) for u in (first, second, third)]
    broken_expiry_for.add(first.pk)  # first in line on every run

    assert tasks.expire_credits() == 2  # no exception: the run went on

    assert [len(LedgerEntry.objects.filter(grant=g, entry_type=EntryType.EXPIRY)) for g in grants] \
        == [0, 1, 1]
    assert f"user {first.pk} failed" in caplog.text
    failure = SweepFailure.objects.get(sweep=Sweep.EXPIRE_CREDITS)
    assert (failure.unit, failure.consecutive_failures) == (f"user:{first.pk}", 1)
    assert "corrupt grant row" in failure.last_error
    assert_books_balance()


def test_a_hold_whose_settlement_fails_does_not_stop_the_others(make_user, fund,
                                                                broken_settlement_for, caplog):
    first, second = make_user(), make_user()
    fund(first, 5)
    fund(second, 5)
    stuck, dead = dead_hold(first), dead_hold(second)
    broken_settlement_for.add(first.pk)

    assert tasks.release_stale_holds() == 1

    stuck.refresh_from_db()
    dead.refresh_from_db()
    assert (stuck.status, dead.status) == (HoldStatus.ACTIVE, HoldStatus.RELEASED)
    second.refresh_from_db()
    assert (second.credit_balance, second.credit_held) == (5 * USD, 0)
    assert f"hold {stuck.pk} failed" in caplog.text
    assert SweepFailure.objects.get(sweep=Sweep.STALE_HOLDS).unit == f"hold:{stuck.pk}"
    assert_books_balance()


def test_a_unit_failing_three_runs_in_a_row_is_reported_to_staff_once_then_cleared(
        make_user, broken_expiry_for, mailoutbox, settings):
    settings.SWEEP_FAILURE_REPORT_AFTER = 3
    settings.ADMINS = [("Ops", "ops@tokenbank.test")]
    get_user_model().objects.create_user("staff@tokenbank.test", "pw", is_staff=True)
    get_user_model().objects.create_user("gone@tokenbank.test", "pw", is_staff=True, is_active=False)
    bad = make_user()
    grant = expired_grant(bad)
    broken_expiry_for.add(bad.pk)

    for _ in range(2):
        tasks.expire_credits()
    assert mailoutbox == []  # two failures in a row: not yet
    tasks.expire_credits()
    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert sorted(mail.to) == ["ops@tokenbank.test", "staff@tokenbank.test"]
    assert f"user:{bad.pk}" in mail.body and "corrupt grant row" in mail.body
    tasks.expire_credits()
    assert len(mailoutbox) == 1  # told once, not on every run
    failure = SweepFailure.objects.get()
    assert failure.consecutive_failures == 4 and failure.reported_at is not None

    broken_expiry_for.discard(bad.pk)  # staff fixed the row
    assert tasks.expire_credits() == 1
    assert not SweepFailure.objects.exists()
    assert LedgerEntry.objects.filter(grant=grant, entry_type=EntryType.EXPIRY).count() == 1
    assert_books_balance()


def test_staff_see_failing_sweep_units_in_the_admin_read_only(client, make_user,
                                                             broken_settlement_for, fund):
    owner = make_user()
    fund(owner, 5)
    stuck = dead_hold(owner)
    broken_settlement_for.add(owner.pk)
    tasks.release_stale_holds()
    root = get_user_model().objects.create_user("root@tokenbank.test", "pw", is_staff=True,
                                                is_superuser=True)
    client.force_login(root)

    page = client.get(reverse("admin:credits_sweepfailure_changelist"))

    assert page.status_code == 200
    assert f"hold:{stuck.pk}" in page.content.decode()
    failure = SweepFailure.objects.get()
    assert client.get(reverse("admin:credits_sweepfailure_add")).status_code == 403
    assert client.post(reverse("admin:credits_sweepfailure_delete", args=[failure.pk]),
                       {"post": "yes"}).status_code == 403
