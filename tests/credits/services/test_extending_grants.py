"""Grants "extended while active": each paid call pushes their expiry, never past the cap;
accounts that never held one pay no query for it on a paid call; credits_verify finds an
account holding one that paid calls would skip."""

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from credits.models import CreditAccount, CreditGrant, GrantKind
from credits.services import expire_credits, use_credits, verify_balances
from credits.services.grants import grant_locked
from credits.services.locks import lock_account

USD = 1_000_000
DAY = dt.timedelta(days=1)

pytestmark = pytest.mark.django_db


def extending_grant(user, *, now, extend_days=7, cap_days=20) -> CreditGrant:
    """A $20 promotional grant that expires `extend_days` after the last paid call."""
    with transaction.atomic():
        account = lock_account(user)
        return grant_locked(account, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                            description="Milestone", actor=None,
                            expires_at=now + extend_days * DAY, idempotency_key=None,
                            source_reference="", now=now, extend_days=extend_days,
                            expiry_cap_at=now + cap_days * DAY)


def test_a_paid_call_pushes_the_expiry_of_an_extending_grant_up_to_its_cap(user):
    start = timezone.now()
    grant = extending_grant(user, now=start)

    use_credits(user=user, amount_micros=USD, now=start + 5 * DAY)
    grant.refresh_from_db()
    assert grant.expires_at == start + 12 * DAY

    use_credits(user=user, amount_micros=USD, now=start + 11 * DAY)
    grant.refresh_from_db()
    assert grant.expires_at == start + 18 * DAY

    use_credits(user=user, amount_micros=USD, now=start + 16 * DAY)
    grant.refresh_from_db()
    assert grant.expires_at == start + 20 * DAY  # the cap, not 23 days
    assert verify_balances() == []


def test_a_paid_call_of_an_account_that_never_had_an_extending_grant_looks_for_none(
        user, fund):
    fund(user, 10)
    assert not CreditAccount.objects.get(user=user).has_extending_grants

    with CaptureQueriesContext(connection) as queries:
        use_credits(user=user, amount_micros=USD)

    looked_for = [q["sql"] for q in queries.captured_queries
                  if 'extend_days" IS NOT NULL' in q["sql"]]
    assert looked_for == []


def test_the_first_extending_grant_marks_the_account(user, fund):
    fund(user, 10)
    extending_grant(user, now=timezone.now())

    assert CreditAccount.objects.get(user=user).has_extending_grants
    assert verify_balances() == []


def test_credits_verify_finds_an_extending_grant_on_an_unmarked_account(user):
    extending_grant(user, now=timezone.now())
    CreditAccount.objects.filter(user=user).update(has_extending_grants=False)

    problems = verify_balances()

    assert [(p.user_id, p.what, p.expected) for p in problems] == [
        (user.pk, "extending grants vs the account's mark", 1)]


def test_the_expiry_sweep_marks_an_account_a_release_left_unmarked_and_paid_calls_extend_again(
        user):
    """A grant written by a process still on the code from before the mark (while a release
    migrates) is found by the next expiry sweep; paid calls extend it from then on."""
    start = timezone.now()
    grant = extending_grant(user, now=start)
    CreditAccount.objects.filter(user=user).update(has_extending_grants=False)

    expire_credits(now=start + DAY)
    use_credits(user=user, amount_micros=USD, now=start + 2 * DAY)

    assert CreditAccount.objects.get(user=user).has_extending_grants
    grant.refresh_from_db()
    assert grant.expires_at == start + 9 * DAY
    assert verify_balances() == []


def test_the_migration_marks_accounts_that_already_hold_an_extending_grant(user, make_user):
    extending_grant(user, now=timezone.now())
    other = make_user()
    CreditAccount.objects.update(has_extending_grants=False)
    migration = importlib.import_module("credits.migrations.0019_account_has_extending_grants")

    migration.mark_accounts(apps, None)

    assert CreditAccount.objects.get(user=user).has_extending_grants
    assert not CreditAccount.objects.get(user=other).has_extending_grants
