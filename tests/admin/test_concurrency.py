"""Four-eyes under concurrency: approvals racing on one request credit it exactly once."""

import pytest

from credits import staff_actions
from credits.models import LedgerEntry, StaffAction, StaffActionStatus
from credits.staff_actions import ActionNotAllowed
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


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
