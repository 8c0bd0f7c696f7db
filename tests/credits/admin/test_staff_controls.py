"""Staff controls that cannot be walked around (issue 12, point 5): no one approves credit
for themself, Support's limit is a daily total, a refund naming a call is bounded by that
call's charge, a confirmation applies once, and the audit log is append-only (point 7).

Each bypass was measured through /admin/, so most tests drive the console with Django's
test client; the races use real threads on PostgreSQL."""

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from billing.selectors import history_entries
from credits import services, staff_actions
from credits.exceptions import InvalidAmount
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    ImmutableEntryError,
    LedgerEntry,
    StaffAction,
    StaffActionStatus,
)
from credits.staff_actions import ActionNotAllowed
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently
from tests.credits.admin.test_console import errors_of, messages_of, submit, user_action_url


def review_url(action_name, action):
    return (reverse("admin:credits_staffaction_money_action", kwargs={"action": action_name})
            + f"?ids={action.pk}")


def balance(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def charged_call(user, request_id: str, micros: int) -> None:
    """A call of `user` the ledger charged `micros` for (its request id is the reference)."""
    services.add_credit(user=user, amount_micros=micros, kind=GrantKind.PURCHASED)
    services.use_credits(user=user, amount_micros=micros, reference=request_id)


# --- four-eyes: the beneficiary never approves, and credit for oneself needs a second person ---


def test_the_staff_member_credited_cannot_approve_the_grant(client, finance, finance2):
    client.force_login(finance)
    response = submit(client, user_action_url("grant", finance2), "confirm", amount="500",
                      kind=GrantKind.ADJUSTMENT, reason="Bonus")
    assert response.status_code == 302
    action = StaffAction.objects.get()
    assert action.status == StaffActionStatus.PENDING

    client.force_login(finance2)
    own = submit(client, review_url("approve", action), "confirm", note="Fine by me")
    assert own.status_code == 200
    assert any("cannot approve" in e for e in errors_of(own))
    action.refresh_from_db()
    assert action.status == StaffActionStatus.PENDING and balance(finance2) == 0


@pytest.mark.parametrize(("group", "amount"), [("Finance", "40"), ("Support", "50")])
def test_credit_for_oneself_waits_for_a_second_person_whatever_the_amount(
        client, make_staff, finance2, group, amount):
    staff = make_staff("self@tokenbank.test", group)
    client.force_login(staff)
    response = submit(client, user_action_url("grant", staff), "confirm", amount=amount,
                      kind=GrantKind.ADJUSTMENT, reason="Testing")
    assert response.status_code == 302
    assert balance(staff) == 0
    action = StaffAction.objects.get()
    assert action.status == StaffActionStatus.PENDING
    assert "own account" in action.result

    client.force_login(finance2)
    assert submit(client, review_url("approve", action), "confirm", note="OK").status_code == 302
    assert balance(staff) == int(amount) * USD
    assert_books_balance(staff.pk)


def test_refund_to_oneself_waits_for_a_second_person(support, finance):
    charged_call(support, "req_self", 2 * USD)
    action = staff_actions.refund_credit(staff=support, user=support, amount_micros=USD,
                                         reason="My own call", usage_reference="req_self")
    assert action.status == StaffActionStatus.PENDING and balance(support) == 0
    staff_actions.approve(action=action, staff=finance)
    assert balance(support) == USD


# --- Support's limit is a running total per staff member per day ------------------------------


def test_support_limit_is_a_daily_total_over_single_grants(client, support, make_user, settings):
    settings.SUPPORT_DAILY_LIMIT_USD = "50"
    a, b = make_user(), make_user()
    client.force_login(support)
    first = submit(client, user_action_url("grant", a), "confirm", amount="30",
                   kind=GrantKind.ADJUSTMENT, reason="Outage")
    assert first.status_code == 302
    second = submit(client, user_action_url("grant", b), "preview", amount="30",
                    kind=GrantKind.ADJUSTMENT, reason="Outage")
    assert second.status_code == 200 and not second.context["confirming"]
    assert any("daily limit" in e for e in errors_of(second))
    forced = submit(client, user_action_url("refund", b), "confirm", amount="21", reason="x")
    assert any("daily limit" in e for e in errors_of(forced))
    assert (balance(a), balance(b)) == (30 * USD, 0)
    assert submit(client, user_action_url("grant", b), "confirm", amount="20",
                  kind=GrantKind.ADJUSTMENT, reason="Outage").status_code == 302
    assert balance(b) == 20 * USD


def test_a_bulk_grant_counts_each_user_against_the_daily_limit(client, support, make_user):
    users = [make_user() for _ in range(6)]
    client.force_login(support)
    url = user_action_url("grant", *users)
    response = submit(client, url, "confirm", amount="50", kind=GrantKind.ADJUSTMENT,
                      reason="Outage")
    assert response.status_code == 200
    assert any("daily limit" in e and "$300.00" in e for e in errors_of(response))
    assert not StaffAction.objects.exists()
    assert sum(balance(u) for u in users) == 0


def test_a_rejected_request_does_not_count_against_the_daily_limit(support, finance, user):
    pending = staff_actions.grant_credit(staff=support, user=support, amount_micros=50 * USD,
                                         reason="Mine")
    with pytest.raises(ActionNotAllowed, match="daily limit"):
        staff_actions.grant_credit(staff=support, user=user, amount_micros=USD, reason="x")
    staff_actions.reject(action=pending, staff=support, note="Withdrawn")
    staff_actions.grant_credit(staff=support, user=user, amount_micros=50 * USD, reason="x")
    assert balance(user) == 50 * USD


def test_finance_has_no_daily_limit(finance, make_user):
    users = [make_user() for _ in range(3)]
    staff_actions.for_each(users, staff_actions.grant_credit, staff=finance,
                           amount_micros=90 * USD, reason="Contract")
    assert sum(balance(u) for u in users) == 270 * USD


# --- a refund naming a call is bounded by that call's charge, and is a REFUND entry -------------


def test_a_refund_naming_a_call_is_capped_at_what_is_left_of_its_charge(client, support, user):
    charged_call(user, "req_53", 53)
    client.force_login(support)
    url = user_action_url("refund", user)
    too_much = submit(client, url, "confirm", amount="50", usage_reference="req_53",
                      reason="Bad answer")
    assert too_much.status_code == 200
    assert any("at most $0.000053" in e for e in errors_of(too_much))
    assert submit(client, url, "confirm", amount="0.000050", usage_reference="req_53",
                  reason="Bad answer").status_code == 302
    again = submit(client, url, "confirm", amount="0.000004", usage_reference="req_53",
                   reason="Bad answer")
    assert any("at most $0.000003" in e for e in errors_of(again))
    assert balance(user) == 50
    assert_books_balance(user.pk)


def test_a_staff_refund_is_a_refund_entry_under_the_dashboards_refunds_filter(support, user):
    charged_call(user, "req_r", 2 * USD)
    action = staff_actions.refund_credit(staff=support, user=user, amount_micros=USD,
                                         reason="Bad answer", usage_reference="req_r")
    entry = LedgerEntry.objects.get(grant=action.grant)
    assert entry.entry_type == EntryType.REFUND and entry.amount_micros == USD
    assert entry.reference == "req_r"
    assert list(history_entries(user=user, entry_type="REFUND")) == [entry]
    assert entry not in history_entries(user=user, entry_type="GRANT")


def test_a_pending_refund_is_checked_again_when_approved(finance, finance2, user, settings):
    settings.ADMIN_APPROVAL_THRESHOLD_USD = "1"
    charged_call(user, "req_p", 3 * USD)
    first = staff_actions.refund_credit(staff=finance, user=user, amount_micros=2 * USD,
                                        reason="a", usage_reference="req_p")
    second = staff_actions.refund_credit(staff=finance, user=user, amount_micros=2 * USD,
                                         reason="b", usage_reference="req_p")
    staff_actions.approve(action=first, staff=finance2)
    with pytest.raises(InvalidAmount, match="at most"):
        staff_actions.approve(action=second, staff=finance2)
    second.refresh_from_db()
    assert second.status == StaffActionStatus.PENDING and balance(user) == 2 * USD


# --- a confirmation applies once -------------------------------------------------------------


def test_one_confirmation_posted_twice_grants_once_and_shows_the_first_result(
        client, support, user):
    client.force_login(support)
    url = user_action_url("grant", user)
    form = {"amount": "5", "kind": GrantKind.ADJUSTMENT, "reason": "Outage"}
    preview = submit(client, url, "preview", **form)
    token = preview.context["token"]
    assert f'value="{token}"'.encode() in preview.content
    first = submit(client, url, "confirm", _token=token, **form)
    client.get(first["Location"])  # the page shows (and uses up) the first messages
    second = submit(client, url, "confirm", _token=token, **form)
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"]
    assert messages_of(second) == messages_of(first)
    assert balance(user) == 5 * USD and StaffAction.objects.count() == 1
    assert CreditGrant.objects.filter(user=user).count() == 1


def test_a_bulk_confirmation_posted_twice_applies_once(client, support, make_user):
    users = [make_user() for _ in range(3)]
    client.force_login(support)
    url = user_action_url("grant", *users)
    form = {"amount": "2", "kind": GrantKind.ADJUSTMENT, "reason": "Outage"}
    token = submit(client, url, "preview", **form).context["token"]
    for _ in range(2):
        assert submit(client, url, "confirm", _token=token, **form).status_code == 302
    assert [balance(u) for u in users] == [2 * USD] * 3
    assert StaffAction.objects.count() == 3


def test_an_approval_posted_twice_applies_once_without_an_error(client, finance, finance2, user):
    action = staff_actions.grant_credit(staff=finance, user=user, amount_micros=300 * USD,
                                        reason="Contract")
    client.force_login(finance2)
    url = review_url("approve", action)
    token = submit(client, url, "preview", note="Checked").context["token"]
    first = submit(client, url, "confirm", note="Checked", _token=token)
    client.get(first["Location"])
    second = submit(client, url, "confirm", note="Checked", _token=token)
    assert first.status_code == second.status_code == 302
    assert messages_of(second) == messages_of(first)
    assert balance(user) == 300 * USD


def test_a_token_replayed_for_another_amount_is_refused(support, user):
    staff_actions.grant_credit(staff=support, user=user, amount_micros=USD, reason="x",
                               idempotency_key="tok-1")
    with pytest.raises(Exception, match="was used"):
        staff_actions.grant_credit(staff=support, user=user, amount_micros=2 * USD, reason="x",
                                   idempotency_key="tok-1")
    assert balance(user) == USD


# --- the audit log is append-only ------------------------------------------------------------


def test_decisions_are_rows_of_their_own_and_the_request_is_never_rewritten(
        finance, finance2, user):
    action = staff_actions.grant_credit(staff=finance, user=user, amount_micros=300 * USD,
                                        reason="Contract")
    before = StaffAction.objects.filter(pk=action.pk).values().get()
    staff_actions.approve(action=action, staff=finance2, note="Checked")
    assert StaffAction.objects.filter(pk=action.pk).values().get() == before
    action.refresh_from_db()
    assert (action.status, action.decided_by, action.decision_note) == (
        StaffActionStatus.APPLIED, finance2, "Checked")


def test_the_model_refuses_to_change_or_delete_an_audit_row(finance, user):
    action = staff_actions.grant_credit(staff=finance, user=user, amount_micros=USD, reason="x")
    action.reason = "rewritten"
    with pytest.raises(ImmutableEntryError):
        action.save()
    with pytest.raises(ImmutableEntryError):
        StaffAction.objects.filter(pk=action.pk).update(reason="rewritten")
    with pytest.raises(ImmutableEntryError):
        StaffAction.objects.filter(pk=action.pk).delete()
    with pytest.raises(ImmutableEntryError):
        action.decision.delete()
    assert StaffAction.objects.get(pk=action.pk).reason == "x"


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["credits_staffaction", "credits_staffactiondecision"])
@pytest.mark.parametrize("statement", ["UPDATE {table} SET result = 'x'", "DELETE FROM {table}"])
def test_the_database_refuses_to_change_or_delete_an_audit_row(finance, user, table, statement):
    staff_actions.grant_credit(staff=finance, user=user, amount_micros=USD, reason="x")
    sql = statement.format(table=table)
    if table == "credits_staffaction":
        sql = sql.replace("result", "reason")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute(sql)
    assert StaffAction.objects.get().reason == "x"


def test_pending_filter_lists_requests_awaiting_approval(client, finance, finance2, user):
    waiting = staff_actions.grant_credit(staff=finance, user=user, amount_micros=300 * USD,
                                         reason="Waiting one")
    decided = staff_actions.grant_credit(staff=finance, user=user, amount_micros=400 * USD,
                                         reason="Decided one")
    staff_actions.reject(action=decided, staff=finance2, note="No")
    staff_actions.grant_credit(staff=finance, user=user, amount_micros=USD, reason="Applied one")
    client.force_login(finance2)
    changelist = reverse("admin:credits_staffaction_changelist")
    pending = client.get(changelist, {"status__exact": "PENDING"})
    assert pending.status_code == 200
    shown = {a.pk for a in pending.context["cl"].result_list}
    assert shown == {waiting.pk}
    rejected = client.get(changelist, {"status__exact": "REJECTED"}).context["cl"].result_list
    assert [a.pk for a in rejected] == [decided.pk]
    assert b"Pending approval" in client.get(changelist).content


# --- races on PostgreSQL ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_support_grants_cannot_pass_the_daily_limit_together(make_staff, make_user):
    support = make_staff("support-race@tokenbank.test", "Support")
    users = [make_user() for _ in range(4)]

    def grant(i):
        return staff_actions.grant_credit(staff=support, user=users[i], amount_micros=30 * USD,
                                          reason="Outage")

    results = run_concurrently(grant, 4)
    applied = [r for r in results if isinstance(r, StaffAction)]
    refused = [r for r in results if isinstance(r, ActionNotAllowed)]
    assert (len(applied), len(refused)) == (1, 3), results
    assert sum(balance(u) for u in users) == 30 * USD
    assert_books_balance(*(u.pk for u in users))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_refunds_of_one_call_refund_its_charge_once(make_staff, make_user):
    staff = [make_staff(f"finance-r{i}@tokenbank.test", "Finance") for i in range(3)]
    user = make_user()
    charged_call(user, "req_race", 2 * USD)

    def refund(i):
        return staff_actions.refund_credit(staff=staff[i], user=user, amount_micros=2 * USD,
                                           reason="Bad answer", usage_reference="req_race")

    results = run_concurrently(refund, 3)
    assert sum(isinstance(r, StaffAction) for r in results) == 1, results
    assert sum(isinstance(r, InvalidAmount) for r in results) == 2, results
    assert balance(user) == 2 * USD
    assert_books_balance(user.pk)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_confirmation_retried_concurrently_applies_once(make_staff, make_user):
    support = make_staff("support-retry@tokenbank.test", "Support")
    user = make_user()

    def confirm(i):
        return staff_actions.for_each([user], staff_actions.grant_credit, staff=support,
                                      amount_micros=5 * USD, reason="Outage",
                                      idempotency_key="retried-token")

    results = run_concurrently(confirm, 3)
    assert all(isinstance(r, list) for r in results), results
    assert len({r[0].pk for r in results}) == 1
    assert balance(user) == 5 * USD and StaffAction.objects.count() == 1
