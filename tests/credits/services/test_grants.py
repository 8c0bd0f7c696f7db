"""The ledger's rules (credits.services.grants): grants, debits, burn-down order, expiry, voids,
take-backs; entries are append-only."""

import datetime as dt

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from credits import services
from credits.exceptions import (
    GrantNotActive,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    UnknownUser,
)
from credits.models import CreditAccount, CreditGrant, EntryType, GrantKind, ImmutableEntryError, LedgerEntry
from credits.selectors import get_user_credits
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.django_db


def balance_of(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def test_a_grant_adds_a_lot_and_a_grant_entry(user, fund):
    grant = fund(user, 20)
    assert balance_of(user) == 20 * USD
    assert grant.remaining_micros == 20 * USD
    entry = LedgerEntry.objects.get(user=user)
    assert (entry.entry_type, entry.amount_micros, entry.balance_after_micros) == (
        EntryType.GRANT, 20 * USD, 20 * USD)
    assert_books_balance(user.pk)


def test_promotional_credit_expires_thirty_days_after_it_is_granted(user):
    now = timezone.now()
    grant = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PROMOTIONAL, now=now)
    assert grant.expires_at == now + dt.timedelta(days=30)
    purchased = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PURCHASED)
    assert purchased.expires_at is None


def test_debits_burn_soonest_expiring_first_and_never_expiring_last(user):
    now = timezone.now()
    never = services.add_credit(user=user, amount_micros=5 * USD, kind=GrantKind.PURCHASED, now=now)
    later = services.add_credit(user=user, amount_micros=5 * USD, kind=GrantKind.ADJUSTMENT,
                                expires_at=now + dt.timedelta(days=20), now=now)
    sooner = services.add_credit(user=user, amount_micros=5 * USD, kind=GrantKind.PROMOTIONAL,
                                 expires_at=now + dt.timedelta(days=2), now=now)
    result = services.use_credits(user=user, amount_micros=7 * USD, reference="req-1", now=now)

    entries = LedgerEntry.objects.filter(pk__in=result.entry_ids).order_by("id")
    assert [(e.grant_id, e.amount_micros) for e in entries] == [(sooner.pk, -5 * USD),
                                                                (later.pk, -2 * USD)]
    never.refresh_from_db()
    assert never.remaining_micros == 5 * USD
    assert result.balance_micros == 8 * USD
    assert_books_balance(user.pk)


def test_ties_in_expiry_burn_the_oldest_grant_first(user):
    now = timezone.now()
    expiry = now + dt.timedelta(days=5)
    older = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.ADJUSTMENT,
                                expires_at=expiry, now=now - dt.timedelta(hours=1))
    services.add_credit(user=user, amount_micros=USD, kind=GrantKind.ADJUSTMENT,
                        expires_at=expiry, now=now)
    result = services.use_credits(user=user, amount_micros=USD // 2, now=now)
    assert LedgerEntry.objects.get(pk=result.entry_ids[0]).grant_id == older.pk


def test_a_debit_above_the_balance_is_refused_and_writes_nothing(user, fund):
    fund(user, 1)
    before = LedgerEntry.objects.count()
    with pytest.raises(InsufficientCredits) as refused:
        services.use_credits(user=user, amount_micros=USD + 1)
    assert refused.value.available_micros == USD
    assert LedgerEntry.objects.count() == before
    assert balance_of(user) == USD


def test_a_grant_expiring_one_second_after_a_debit_pays_for_it(user):
    now = timezone.now()
    services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PROMOTIONAL,
                        expires_at=now + dt.timedelta(seconds=1), now=now - dt.timedelta(days=1))
    services.use_credits(user=user, amount_micros=USD, now=now)
    assert balance_of(user) == 0


def test_a_grant_that_expired_one_second_before_a_debit_cannot_pay_for_it(user):
    now = timezone.now()
    grant = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PROMOTIONAL,
                                expires_at=now - dt.timedelta(seconds=1),
                                now=now - dt.timedelta(days=1))
    with pytest.raises(InsufficientCredits):
        services.use_credits(user=user, amount_micros=1, now=now)
    assert get_user_credits(user=user, now=now).available_micros == 0
    grant.refresh_from_db()
    assert grant.remaining_micros == USD  # the refused call wrote nothing, not even its sweep
    assert_books_balance(user.pk)


def test_a_debit_expires_due_grants_of_its_user_on_the_way(user, fund):
    now = timezone.now()
    services.add_credit(user=user, amount_micros=2 * USD, kind=GrantKind.PROMOTIONAL,
                        expires_at=now + dt.timedelta(hours=1), now=now)
    fund(user, 3)
    services.use_credits(user=user, amount_micros=USD, now=now + dt.timedelta(hours=2))
    assert balance_of(user) == 2 * USD
    assert LedgerEntry.objects.filter(user=user, entry_type=EntryType.EXPIRY).get().amount_micros \
        == -2 * USD
    assert_books_balance(user.pk)


def test_expiry_takes_only_what_is_left_of_a_partly_used_grant(user):
    now = timezone.now()
    grant = services.add_credit(user=user, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                                now=now)
    services.use_credits(user=user, amount_micros=7 * USD, now=now)
    run = services.expire_credits(now=grant.expires_at)
    assert (run.expired, run.failed) == (1, ())
    entry = LedgerEntry.objects.get(user=user, entry_type=EntryType.EXPIRY)
    assert entry.amount_micros == -13 * USD
    assert entry.balance_after_micros == 0
    assert balance_of(user) == 0
    assert services.expire_credits(now=grant.expires_at + dt.timedelta(days=1)).expired == 0
    assert_books_balance(user.pk)


def test_a_grant_expiring_one_second_after_now_is_left_alone(user):
    now = timezone.now()
    services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PROMOTIONAL,
                        expires_at=now + dt.timedelta(seconds=1), now=now)
    assert services.expire_credits(now=now).expired == 0
    assert balance_of(user) == USD


def test_replaying_a_debit_with_its_key_returns_the_original_result(user, fund):
    fund(user, 5)
    first = services.use_credits(user=user, amount_micros=USD, reference="r", idempotency_key="k1")
    again = services.use_credits(user=user, amount_micros=USD, reference="r", idempotency_key="k1")
    assert again == first
    assert balance_of(user) == 4 * USD
    with pytest.raises(IdempotencyConflict):
        services.use_credits(user=user, amount_micros=2 * USD, reference="r", idempotency_key="k1")
    assert balance_of(user) == 4 * USD


def test_replaying_a_grant_with_its_key_grants_once(user):
    first = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PURCHASED,
                                idempotency_key="stripe:cs_1")
    again = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PURCHASED,
                                idempotency_key="stripe:cs_1")
    assert again.pk == first.pk
    assert balance_of(user) == USD
    with pytest.raises(IdempotencyConflict):
        services.add_credit(user=user, amount_micros=2 * USD, kind=GrantKind.PURCHASED,
                            idempotency_key="stripe:cs_1")


@pytest.mark.parametrize("amount", [0, -1, 1.5, "10", None, True])
def test_bad_amounts_are_refused_with_nothing_written(user, fund, amount):
    fund(user, 5)
    before = LedgerEntry.objects.count()
    with pytest.raises(InvalidAmount):
        services.use_credits(user=user, amount_micros=amount)
    with pytest.raises(InvalidAmount):
        services.add_credit(user=user, amount_micros=amount, kind=GrantKind.PURCHASED)
    with pytest.raises(InvalidAmount):
        services.authorize(user=user, amount_micros=amount)
    assert LedgerEntry.objects.count() == before
    assert balance_of(user) == 5 * USD


def test_unknown_users_and_kinds_are_refused(user):
    with pytest.raises(UnknownUser):
        services.use_credits(user=987654, amount_micros=1)
    with pytest.raises(UnknownUser):
        services.add_credit(user=987654, amount_micros=1, kind=GrantKind.PURCHASED)
    with pytest.raises(InvalidAmount):
        services.add_credit(user=user, amount_micros=1, kind="FREE_MONEY")
    with pytest.raises(InvalidAmount):
        services.add_credit(user=user, amount_micros=1, kind=GrantKind.PURCHASED,
                            expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert not CreditGrant.objects.exists()


def test_adjustments_need_a_reason_and_never_go_below_zero(user, fund, make_user):
    staff = make_user("staff@example.com", is_staff=True)
    fund(user, 2)
    with pytest.raises(InvalidAmount):
        services.adjust_credit(user=user, amount_micros=USD, reason=" ", actor=staff)
    with pytest.raises(InsufficientCredits):
        services.adjust_credit(user=user, amount_micros=-3 * USD, reason="typo", actor=staff)
    services.adjust_credit(user=user, amount_micros=-USD, reason="duplicate grant", actor=staff)
    entry = LedgerEntry.objects.filter(user=user).order_by("-id").first()
    assert (entry.entry_type, entry.amount_micros, entry.actor, entry.description) == (
        EntryType.ADJUSTMENT, -USD, staff, "duplicate grant")
    grant = services.adjust_credit(user=user, amount_micros=3 * USD, reason="goodwill", actor=staff)
    assert grant.kind == GrantKind.ADJUSTMENT and grant.actor == staff
    assert balance_of(user) == 4 * USD
    assert_books_balance(user.pk)


def test_voiding_a_grant_removes_its_rest_once(user, fund):
    grant = fund(user, 5)
    services.use_credits(user=user, amount_micros=2 * USD)
    services.void_grant(grant=grant, reason="fraud")
    assert balance_of(user) == 0
    with pytest.raises(GrantNotActive):
        services.void_grant(grant=grant, reason="again")
    with pytest.raises(InvalidAmount):
        services.void_grant(grant=fund(user, 1), reason="")
    assert_books_balance(user.pk)


def test_taking_back_credit_never_goes_below_zero_and_reports_the_shortfall(user, fund):
    purchased = fund(user, 10)
    other = fund(user, 5, kind=GrantKind.ADJUSTMENT)
    services.use_credits(user=user, amount_micros=8 * USD)  # burns `purchased` (older) first
    result = services.take_back_credit(grant=purchased, amount_micros=10 * USD, reason="refund",
                                       idempotency_key="re_1")
    assert (result.taken_micros, result.shortfall_micros) == (2 * USD, 8 * USD)
    other.refresh_from_db()
    assert other.remaining_micros == 5 * USD  # never touches another grant
    assert services.take_back_credit(grant=purchased, amount_micros=10 * USD, reason="refund",
                                     idempotency_key="re_1") == result
    assert balance_of(user) == 5 * USD
    assert_books_balance(user.pk)


def test_ledger_entries_cannot_be_edited_or_deleted(user, fund):
    fund(user, 1)
    entry = LedgerEntry.objects.get(user=user)
    entry.amount_micros = 999
    with pytest.raises(ImmutableEntryError):
        entry.save()
    with pytest.raises(ImmutableEntryError):
        entry.delete()
    with pytest.raises(ImmutableEntryError):
        LedgerEntry.objects.filter(user=user).update(amount_micros=0)
    with pytest.raises(ImmutableEntryError):
        LedgerEntry.objects.filter(user=user).delete()


@pytest.mark.postgres
def test_the_database_itself_refuses_to_edit_or_delete_entries(user, fund):
    fund(user, 1)
    entry = LedgerEntry.objects.get(user=user)
    for sql in ("UPDATE credits_ledgerentry SET amount_micros = 0 WHERE id = %s",
                "DELETE FROM credits_ledgerentry WHERE id = %s"):
        with pytest.raises(Exception, match="append-only"), transaction.atomic(), \
                connection.cursor() as cursor:
            cursor.execute(sql, [entry.pk])
    assert LedgerEntry.objects.get(pk=entry.pk).amount_micros == USD


def test_database_constraints_keep_balances_and_grants_non_negative(user, fund):
    grant = fund(user, 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditGrant.objects.filter(pk=grant.pk).update(remaining_micros=-1)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditAccount.objects.filter(user=user).update(balance_micros=-1)
