"""Take-backs (refunds) of credit that calls in flight hold: owed, never spendable, taken
as the holds settle; what the calls charged is the shortfall (issue 12, point 4)."""

import random

import pytest

from credits import services
from credits.exceptions import CreditError, IdempotencyConflict, InsufficientCredits
from credits.models import CreditGrant, EntryType, GrantKind, LedgerEntry, TakeBack
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently


def balance_of(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def parts(result) -> tuple[int, int, int]:
    return result.taken_micros, result.pending_micros, result.shortfall_micros


@pytest.mark.django_db
def test_refund_owed_on_two_holds_is_taken_from_the_release_and_spent_by_the_capture(user, fund):
    grant = fund(user, 10)
    first = services.authorize(user=user, amount_micros=5 * USD, reference="call-1")
    second = services.authorize(user=user, amount_micros=4 * USD, reference="call-2")

    result = services.take_back_credit(grant=grant, amount_micros=10 * USD, reason="refund",
                                       idempotency_key="re_1")
    assert parts(result) == (1 * USD, 9 * USD, 0)
    services.capture(hold=first, amount_micros=5 * USD)  # spent all it held
    services.release(hold=second)

    replay = services.take_back_credit(grant=grant, amount_micros=10 * USD, reason="refund",
                                       idempotency_key="re_1")
    assert parts(replay) == (5 * USD, 0, 5 * USD) and replay.complete
    assert balance_of(user) == 0
    with pytest.raises(InsufficientCredits):
        services.use_credits(user=user, amount_micros=1)
    assert_books_balance(user.pk)


@pytest.mark.django_db
def test_owed_credit_is_never_spendable_while_the_call_is_in_flight(user, fund):
    grant = fund(user, 10)
    services.authorize(user=user, amount_micros=9 * USD, reference="call-1")

    services.take_back_credit(grant=grant, amount_micros=10 * USD, reason="refund",
                              idempotency_key="re_1")

    with pytest.raises(InsufficientCredits):
        services.use_credits(user=user, amount_micros=1, reference="call-2")
    grant.refresh_from_db()
    assert (grant.remaining_micros, grant.held_micros, grant.pending_take_back_micros) == (
        9 * USD, 9 * USD, 9 * USD)


@pytest.mark.django_db
def test_a_refund_meets_held_credit_only_once(user, fund):
    grant = fund(user, 10)
    hold = services.authorize(user=user, amount_micros=9 * USD, reference="call-1")
    services.take_back_credit(grant=grant, amount_micros=6 * USD, reason="refund 1",
                              idempotency_key="re_1")  # $1 taken, $5 owed

    second = services.take_back_credit(grant=grant, amount_micros=6 * USD, reason="refund 2",
                                       idempotency_key="re_2")

    assert parts(second) == (0, 4 * USD, 2 * USD)  # only $4 of the held $9 is not owed yet
    services.release(hold=hold)
    assert [t.taken_micros for t in TakeBack.objects.order_by("id")] == [6 * USD, 4 * USD]
    assert balance_of(user) == 0
    assert_books_balance(user.pk)


@pytest.mark.django_db
def test_credit_owed_on_a_voided_grant_is_taken_back_before_the_rest_is_voided(user, fund):
    grant = fund(user, 10)
    hold = services.authorize(user=user, amount_micros=9 * USD, reference="call-1")
    services.take_back_credit(grant=grant, amount_micros=5 * USD, reason="refund",
                              idempotency_key="re_1")
    services.void_grant(grant=grant, reason="fraud")

    services.release(hold=hold)

    kinds = {e.entry_type: e.amount_micros
             for e in LedgerEntry.objects.filter(hold=hold, amount_micros__lt=0)}
    assert kinds == {EntryType.REFUND: -4 * USD, EntryType.VOID: -5 * USD}
    assert balance_of(user) == 0
    assert_books_balance(user.pk)


@pytest.mark.django_db
def test_a_take_back_key_reused_for_another_amount_is_refused(user, fund):
    grant = fund(user, 10)
    services.take_back_credit(grant=grant, amount_micros=3 * USD, reason="refund",
                              idempotency_key="re_1")
    with pytest.raises(IdempotencyConflict):
        services.take_back_credit(grant=grant, amount_micros=4 * USD, reason="refund",
                                  idempotency_key="re_1")
    assert balance_of(user) == 7 * USD


@pytest.mark.django_db
def test_reversing_a_take_back_withdraws_what_is_owed_and_gives_back_what_was_taken(user, fund):
    grant = fund(user, 10)
    hold = services.authorize(user=user, amount_micros=9 * USD, reference="call-1")
    services.take_back_credit(grant=grant, amount_micros=10 * USD, reason="dispute",
                              idempotency_key="dp_1")

    reversal = services.reverse_take_back(user=user, idempotency_key="dp_1", reason="won")
    again = services.reverse_take_back(user=user, idempotency_key="dp_1", reason="won")

    assert reversal.cancelled_micros == 9 * USD and reversal.grant.amount_micros == 1 * USD
    assert again.grant == reversal.grant and again.cancelled_micros == 0
    services.capture(hold=hold, amount_micros=2 * USD)
    assert balance_of(user) == 8 * USD
    assert CreditGrant.objects.filter(user=user, kind=GrantKind.PURCHASED).count() == 2
    assert_books_balance(user.pk)


@pytest.mark.django_db
def test_verify_reports_owed_credit_that_does_not_match_the_take_backs(user, fund):
    grant = fund(user, 10)
    services.authorize(user=user, amount_micros=9 * USD, reference="call-1")
    services.take_back_credit(grant=grant, amount_micros=10 * USD, reason="refund",
                              idempotency_key="re_1")

    TakeBack.objects.filter(user=user).update(pending_micros=8 * USD, shortfall_micros=1 * USD)

    assert [m.what for m in services.verify_balances(user_ids=[user.pk])] == [
        f"grant #{grant.pk} owed take-back vs its take-backs"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refunds_racing_captures_releases_and_debits_never_let_refunded_credit_be_spent(
    make_user, seed
):
    rng = random.Random(seed)
    user = make_user()
    grant = services.add_credit(user=user, amount_micros=10 * USD, kind=GrantKind.PURCHASED)
    holds = [services.authorize(user=user, amount_micros=USD, reference=f"call-{i}")
             for i in range(8)]
    charges = [rng.choice([None, 0, USD // 2, USD]) for _ in holds]
    refunds = [("re_a", 4 * USD), ("re_b", 6 * USD)] * 2  # each delivered twice

    def act(i: int):
        if i < 8:
            if charges[i] is None:
                return services.release(hold=holds[i].pk)
            return services.capture(hold=holds[i].pk, amount_micros=charges[i])
        if i < 12:
            key, amount = refunds[i - 8]
            return services.take_back_credit(grant=grant.pk, amount_micros=amount,
                                             reason="refund", idempotency_key=key)
        return services.use_credits(user=user.pk, amount_micros=USD // 2, reference=f"d-{i}")

    results = run_concurrently(act, 20)

    assert not [r for r in results if isinstance(r, CreditError)
                and not isinstance(r, InsufficientCredits)], results
    take_backs = list(TakeBack.objects.filter(user=user))
    assert len(take_backs) == 2
    assert all(t.pending_micros == 0 and t.completed_at for t in take_backs)
    assert sum(t.requested_micros for t in take_backs) == 10 * USD
    spent = -sum(e.amount_micros for e in LedgerEntry.objects.filter(
        user=user, entry_type__in=[EntryType.USAGE, EntryType.CAPTURE]))
    refunded = -sum(e.amount_micros for e in LedgerEntry.objects.filter(
        user=user, entry_type=EntryType.REFUND))
    # Everything not refunded was spent, and only what was spent is the shortfall.
    assert refunded == sum(t.taken_micros for t in take_backs) == 10 * USD - spent
    assert sum(t.shortfall_micros for t in take_backs) == spent
    assert balance_of(user) == 0
    assert_books_balance(user.pk)
