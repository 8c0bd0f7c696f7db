"""The staff money actions (credits.staff_actions): permissions, limits, four-eyes, audit."""

import datetime as dt

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import create_api_key
from credits import services, staff_actions
from credits.exceptions import GrantNotActive, InsufficientCredits, InvalidAmount
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    StaffAction,
    StaffActionStatus,
)
from credits.staff_actions import ActionNotAllowed, BulkActionFailed
from inference.models import AiModel, UsageRecord, UsageStatus
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently


def test_support_grant_within_limit_is_applied_with_actor_and_reason_on_the_entry(support, user):
    action = staff_actions.grant_credit(staff=support, user=user, amount_micros=25 * USD,
                                        reason="Ticket 42: outage")
    user.refresh_from_db()
    assert action.status == StaffActionStatus.APPLIED
    assert user.credit_balance == 25 * USD
    entry = LedgerEntry.objects.get(user=user, entry_type=EntryType.GRANT)
    # The reason is internal (issue 15); the customer reads the kind's default note.
    assert entry.actor == support and entry.internal_reason == "Ticket 42: outage"
    assert entry.description == "Credit from TokenBank support"
    assert action.grant.idempotency_key == f"staff-action:{action.pk}"
    assert_books_balance(user.pk)


def test_support_cannot_grant_above_the_support_limit(support, user):
    with pytest.raises(ActionNotAllowed, match=r"up to \$50.00"):
        staff_actions.grant_credit(staff=support, user=user, amount_micros=51 * USD, reason="x")
    assert not StaffAction.objects.exists() and not CreditGrant.objects.filter(user=user).exists()


def test_support_cannot_adjust_void_or_change_expiry(support, user, fund):
    grant = fund(user, 10)
    with pytest.raises(ActionNotAllowed):
        staff_actions.adjust_balance(staff=support, user=user, amount_micros=-USD, reason="x")
    with pytest.raises(ActionNotAllowed):
        staff_actions.void_rest_of_grant(staff=support, grant=grant, reason="x")
    with pytest.raises(ActionNotAllowed):
        staff_actions.expire_now(staff=support, grant=grant, reason="x")
    user.refresh_from_db()
    assert user.credit_balance == 10 * USD and not StaffAction.objects.exists()


def test_staff_without_a_group_can_do_nothing(bare_staff, user):
    with pytest.raises(ActionNotAllowed):
        staff_actions.grant_credit(staff=bare_staff, user=user, amount_micros=USD, reason="x")
    with pytest.raises(ActionNotAllowed):
        staff_actions.refund_credit(staff=bare_staff, user=user, amount_micros=USD, reason="x")
    user.refresh_from_db()
    assert user.credit_balance == 0 and not StaffAction.objects.exists()
    assert not CreditGrant.objects.filter(user=user).exists()


def test_a_reason_is_required(finance, user):
    with pytest.raises(InvalidAmount, match="reason is required"):
        staff_actions.grant_credit(staff=finance, user=user, amount_micros=USD, reason="  ")


@pytest.mark.parametrize("amount", [0, -5 * USD])
def test_grant_and_refund_refuse_zero_and_negative(finance, user, amount):
    with pytest.raises(InvalidAmount):
        staff_actions.grant_credit(staff=finance, user=user, amount_micros=amount, reason="x")
    with pytest.raises(InvalidAmount):
        staff_actions.refund_credit(staff=finance, user=user, amount_micros=amount, reason="x")
    assert not StaffAction.objects.exists()


def test_negative_adjustment_below_zero_is_refused_and_nothing_is_written(finance, user, fund):
    fund(user, 3)
    with pytest.raises(InsufficientCredits):
        staff_actions.adjust_balance(staff=finance, user=user, amount_micros=-5 * USD, reason="x")
    user.refresh_from_db()
    assert user.credit_balance == 3 * USD and not StaffAction.objects.exists()


def test_negative_adjustment_takes_credit_back(finance, user, fund):
    fund(user, 10)
    action = staff_actions.adjust_balance(staff=finance, user=user, amount_micros=-4 * USD,
                                          reason="Duplicate purchase")
    user.refresh_from_db()
    assert user.credit_balance == 6 * USD and action.status == StaffActionStatus.APPLIED
    entry = LedgerEntry.objects.get(user=user, entry_type=EntryType.ADJUSTMENT)
    assert entry.actor == finance and entry.internal_reason == "Duplicate purchase"
    assert entry.customer_description == "Balance correction by TokenBank support"
    assert_books_balance(user.pk)


def usage_record(user, request_id):
    """A call of `user` charged $2 in the ledger (its request id is the entry's reference)."""
    grant = services.add_credit(user=user, amount_micros=2 * USD, kind=GrantKind.PURCHASED)
    services.use_credits(user=user, amount_micros=2 * USD, reference=request_id)
    model, _ = AiModel.objects.get_or_create(id="refund-test")
    UsageRecord.objects.create(
        request_id=request_id, user=user, model=model, endpoint="chat.completions",
        input_price_per_million_micros=1, output_price_per_million_micros=1,
        cost_micros=2 * USD, status=UsageStatus.SUCCEEDED, started_at=timezone.now())
    return grant


def test_refund_links_the_usage_record(support, user):
    usage_record(user, "req_123")
    action = staff_actions.refund_credit(staff=support, user=user, amount_micros=2 * USD,
                                         reason="Bad completion", usage_reference="req_123")
    assert action.grant.kind == GrantKind.REFUND
    assert action.grant.source_reference == "req_123"
    # Credit given back is a REFUND entry (the statements' "Refunds"), naming the call.
    assert LedgerEntry.objects.get(user=user, entry_type=EntryType.REFUND,
                                   grant=action.grant).reference == "req_123"


def test_refund_refuses_someone_elses_usage_record(support, user, make_user):
    usage_record(make_user(), "req_other")
    with pytest.raises(InvalidAmount, match="no usage record"):
        staff_actions.refund_credit(staff=support, user=user, amount_micros=USD, reason="x",
                                    usage_reference="req_other")
    assert not StaffAction.objects.exists()


def test_void_takes_the_rest_of_a_grant_and_a_second_void_is_refused(finance, user, fund):
    grant = fund(user, 10)
    staff_actions.void_rest_of_grant(staff=finance, grant=grant, reason="Fraud")
    user.refresh_from_db()
    assert user.credit_balance == 0
    grant.refresh_from_db()
    with pytest.raises(GrantNotActive):
        staff_actions.void_rest_of_grant(staff=finance, grant=grant, reason="Again")
    assert StaffAction.objects.count() == 1


def test_change_expiry_moves_it_and_leaves_an_entry_of_zero(finance, user, fund):
    grant = fund(user, 10)
    later = timezone.now() + dt.timedelta(days=90)
    action = staff_actions.change_expiry(staff=finance, grant=grant, expires_at=later,
                                         reason="Goodwill")
    grant.refresh_from_db()
    assert grant.expires_at == later and action.status == StaffActionStatus.APPLIED
    trace = LedgerEntry.objects.get(grant=grant, entry_type=EntryType.EXPIRY_CHANGE)
    assert trace.amount_micros == 0 and trace.actor == finance
    assert trace.internal_reason == "Goodwill"
    assert trace.customer_description == "Expiry date changed by TokenBank support"
    assert trace.reference.endswith("->" + later.isoformat())
    assert_books_balance(user.pk)


def test_change_expiry_to_the_past_is_refused(finance, user, fund):
    grant = fund(user, 10)
    with pytest.raises(InvalidAmount):
        staff_actions.change_expiry(staff=finance, grant=grant, reason="x",
                                    expires_at=timezone.now() - dt.timedelta(days=1))
    grant.refresh_from_db()
    assert grant.expires_at is None and not StaffAction.objects.exists()
    assert not LedgerEntry.objects.filter(grant=grant, entry_type=EntryType.EXPIRY_CHANGE).exists()


def test_expire_now_expires_the_free_remainder(finance, user, fund):
    grant = fund(user, 10)
    action = staff_actions.expire_now(staff=finance, grant=grant, reason="Terms breach")
    user.refresh_from_db()
    assert user.credit_balance == 0 and "Expired $10.00" in action.result
    assert LedgerEntry.objects.filter(grant=grant, entry_type=EntryType.EXPIRY).count() == 1
    with pytest.raises(GrantNotActive):
        staff_actions.expire_now(staff=finance, grant=grant, reason="Again")
    assert_books_balance(user.pk)


def test_revoke_api_keys_revokes_every_active_key(support, user):
    create_api_key(user=user, name="a")
    create_api_key(user=user, name="b")
    action = staff_actions.revoke_api_keys(staff=support, user=user, reason="Leaked on GitHub")
    assert action.result == "Revoked 2 active API key(s)."
    assert not ApiKey.objects.filter(user=user, revoked_at__isnull=True).exists()


# --- four-eyes ---------------------------------------------------------------------------


@override_settings(ADMIN_APPROVAL_THRESHOLD_USD="100")
def test_grant_above_threshold_waits_for_a_second_approver(finance, finance2, user):
    action = staff_actions.grant_credit(staff=finance, user=user, amount_micros=500 * USD,
                                        reason="Enterprise trial")
    user.refresh_from_db()
    assert action.status == StaffActionStatus.PENDING and user.credit_balance == 0
    assert action.grant is None
    with pytest.raises(ActionNotAllowed, match="second staff member"):
        staff_actions.approve(action=action, staff=finance)
    staff_actions.approve(action=action, staff=finance2, note="OK per contract")
    user.refresh_from_db()
    action.refresh_from_db()
    assert user.credit_balance == 500 * USD
    assert action.status == StaffActionStatus.APPLIED and action.decided_by == finance2
    assert LedgerEntry.objects.get(user=user).actor == finance  # who asked, with their reason
    with pytest.raises(ActionNotAllowed, match="already applied"):
        staff_actions.approve(action=action, staff=finance2)
    user.refresh_from_db()
    assert user.credit_balance == 500 * USD  # applied once
    assert_books_balance(user.pk)


def test_approver_needs_the_permission(finance, support, user):
    action = staff_actions.adjust_balance(staff=finance, user=user, amount_micros=200 * USD,
                                          reason="Contract credit")
    with pytest.raises(ActionNotAllowed):
        staff_actions.approve(action=action, staff=support)
    action.refresh_from_db()
    assert action.status == StaffActionStatus.PENDING


def test_rejection_is_recorded_and_writes_no_credit(finance, finance2, user):
    action = staff_actions.grant_credit(staff=finance, user=user, amount_micros=300 * USD,
                                        reason="Big grant")
    with pytest.raises(InvalidAmount):
        staff_actions.reject(action=action, staff=finance2, note="")
    staff_actions.reject(action=action, staff=finance2, note="No contract on file")
    action.refresh_from_db()
    user.refresh_from_db()
    assert action.status == StaffActionStatus.REJECTED and action.decided_by == finance2
    assert action.decision_note == "No contract on file"
    assert user.credit_balance == 0 and not LedgerEntry.objects.filter(user=user).exists()
    with pytest.raises(ActionNotAllowed):
        staff_actions.approve(action=action, staff=finance2)


def test_pending_adjustment_is_checked_against_the_ledger_when_requested(finance, user, fund):
    fund(user, 10)
    with pytest.raises(InsufficientCredits):
        staff_actions.adjust_balance(staff=finance, user=user, amount_micros=-150 * USD,
                                     reason="x")
    assert not StaffAction.objects.exists()


def test_bulk_action_is_all_or_nothing(finance, make_user, fund):
    rich, poor = make_user(), make_user()
    fund(rich, 10)
    with pytest.raises(BulkActionFailed, match=poor.email):
        staff_actions.for_each([rich, poor], staff_actions.adjust_balance, staff=finance,
                               amount_micros=-5 * USD, reason="Clawback")
    rich.refresh_from_db()
    assert rich.credit_balance == 10 * USD and not StaffAction.objects.exists()
    fund(poor, 10)
    done = staff_actions.for_each([rich, poor], staff_actions.adjust_balance, staff=finance,
                                  amount_micros=-5 * USD, reason="Clawback")
    assert len(done) == 2
    assert_books_balance(rich.pk, poor.pk)


# --- four-eyes under concurrency: approvals racing on one request credit it exactly once ---


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_approvals_and_a_rejection_apply_a_request_once(make_staff, make_user):
    requester = make_staff("finance-a@tokenbank.test", "Finance")
    approvers = [make_staff(f"finance-{i}@tokenbank.test", "Finance") for i in range(4)]
    user = make_user()
    action = staff_actions.grant_credit(staff=requester, user=user, amount_micros=300 * USD,
                                        reason="Enterprise credit")
    assert action.status == StaffActionStatus.PENDING

    def decide(i):
        if i == 4:
            return staff_actions.reject(action=action.pk, staff=approvers[0], note="No")
        return staff_actions.approve(action=action.pk, staff=approvers[i])

    results = run_concurrently(decide, 5)
    decided = [r for r in results if isinstance(r, StaffAction)]
    refused = [r for r in results if isinstance(r, ActionNotAllowed)]
    assert (len(decided), len(refused)) == (1, 4), results
    action.refresh_from_db()
    user.refresh_from_db()
    credited = LedgerEntry.objects.filter(user=user).count()
    if action.status == StaffActionStatus.APPLIED:
        assert user.credit_balance == 300 * USD and credited == 1
    else:
        assert action.status == StaffActionStatus.REJECTED
        assert user.credit_balance == 0 and credited == 0
    assert_books_balance(user.pk)
