"""The admin console over HTTP (credits.admin.console): money-action pages (form -> confirm ->
applied), their permissions and form errors, read-only history, CSV export, the audit,
four-eyes, and the promotion admin."""

import datetime as dt

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from accounts.services import create_api_key
from credits import services
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    Promotion,
    StaffAction,
    StaffActionStatus,
)
from tests.books import USD, assert_books_balance


def user_action_url(action, *users):
    return (reverse("admin:accounts_user_money_action", kwargs={"action": action})
            + "?ids=" + ",".join(str(u.pk) for u in users))


def grant_action_url(action, *grants):
    return (reverse("admin:credits_creditgrant_money_action", kwargs={"action": action})
            + "?ids=" + ",".join(str(g.pk) for g in grants))


def submit(client, url, step, **data):
    ids = url.split("?ids=")[1]
    return client.post(url, {"ids": ids, "_step": step, **data})


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def errors_of(response):
    form = response.context["form"]
    return [str(e) for errors in form.errors.values() for e in errors]


@pytest.fixture
def as_staff(client):
    def login(staff):
        client.force_login(staff)
        return client

    return login


# --- each action: allowed and forbidden ------------------------------------------------


def test_grant_shows_a_confirmation_then_applies_once(as_staff, support, user):
    client = as_staff(support)
    url = user_action_url("grant", user)
    assert client.get(url).status_code == 200
    data = {"amount": "12.5", "kind": GrantKind.ADJUSTMENT, "reason": "Ticket 7"}
    preview = submit(client, url, "preview", **data)
    assert preview.status_code == 200 and preview.context["confirming"]
    assert b"Please confirm" in preview.content and b"$12.50" in preview.content
    user.refresh_from_db()
    assert user.credit_balance == 0 and not StaffAction.objects.exists()  # dry run only
    done = submit(client, url, "confirm", **data)
    assert done.status_code == 302
    assert done["Location"] == reverse("admin:accounts_user_change", args=[user.pk])
    user.refresh_from_db()
    assert user.credit_balance == 12_500_000
    assert any("Granted $12.50" in m for m in messages_of(done))
    entry = LedgerEntry.objects.get(user=user)
    # The reason is internal (issue 15): the customer's line is the kind's default note.
    assert entry.actor == support and entry.internal_reason == "Ticket 7"
    assert entry.customer_description == "Credit from TokenBank support"


def test_staff_without_permission_get_403_on_every_action(as_staff, bare_staff, user, fund):
    grant = fund(user, 5)
    client = as_staff(bare_staff)
    for action in ("grant", "adjust", "refund", "revoke_keys"):
        assert client.get(user_action_url(action, user)).status_code == 403, action
    for action in ("void", "change_expiry", "expire_now"):
        assert client.get(grant_action_url(action, grant)).status_code == 403, action
    response = submit(client, user_action_url("grant", user), "confirm", amount="5",
                      kind=GrantKind.ADJUSTMENT, reason="x")
    assert response.status_code == 403
    user.refresh_from_db()
    assert user.credit_balance == 5 * USD


def test_support_may_grant_refund_and_revoke_but_not_adjust_void_or_expire(
        as_staff, support, user, fund):
    grant = fund(user, 5)
    client = as_staff(support)
    for action in ("grant", "refund", "revoke_keys"):
        assert client.get(user_action_url(action, user)).status_code == 200, action
    assert client.get(user_action_url("adjust", user)).status_code == 403
    for action in ("void", "change_expiry", "expire_now"):
        assert client.get(grant_action_url(action, grant)).status_code == 403, action


def test_support_grant_above_the_limit_is_a_form_error(as_staff, support, user):
    client = as_staff(support)
    response = submit(client, user_action_url("grant", user), "preview", amount="80",
                      kind=GrantKind.ADJUSTMENT, reason="Big")
    assert response.status_code == 200
    assert any("up to $50.00" in e for e in errors_of(response))
    assert not StaffAction.objects.exists()


def test_adjust_both_ways(as_staff, finance, user, fund):
    fund(user, 10)
    client = as_staff(finance)
    url = user_action_url("adjust", user)
    assert submit(client, url, "confirm", amount="-2.25", reason="Clawback").status_code == 302
    assert submit(client, url, "confirm", amount="1", reason="Goodwill").status_code == 302
    user.refresh_from_db()
    assert user.credit_balance == 8_750_000
    assert_books_balance(user.pk)


def test_refund_linked_to_a_usage_record_and_unknown_ones_refused(as_staff, support, user):
    client = as_staff(support)
    url = user_action_url("refund", user)
    response = submit(client, url, "preview", amount="1", usage_reference="req_missing",
                      reason="Bad answer")
    assert any("No usage record" in e for e in errors_of(response))
    assert submit(client, url, "confirm", amount="1", reason="Bad answer").status_code == 302
    assert CreditGrant.objects.get(user=user).kind == GrantKind.REFUND


def test_void_change_expiry_and_expire_now_pages(as_staff, finance, user, fund):
    a, b, c = fund(user, 1), fund(user, 2), fund(user, 3)
    client = as_staff(finance)
    assert submit(client, grant_action_url("void", a), "confirm", reason="Fraud").status_code == 302
    later = (timezone.now() + dt.timedelta(days=10)).replace(second=0, microsecond=0)
    response = submit(client, grant_action_url("change_expiry", b), "confirm",
                      expires_at=later.strftime("%Y-%m-%dT%H:%M"), reason="Extend")
    assert response.status_code == 302
    assert submit(client, grant_action_url("expire_now", c), "confirm",
                  reason="Breach").status_code == 302
    b.refresh_from_db()
    user.refresh_from_db()
    assert b.expires_at == later and user.credit_balance == 2 * USD
    assert LedgerEntry.objects.filter(user=user, entry_type=EntryType.EXPIRY_CHANGE).count() == 2
    assert_books_balance(user.pk)


def test_revoke_keys_page(as_staff, support, user):
    create_api_key(user=user, name="laptop")
    client = as_staff(support)
    response = submit(client, user_action_url("revoke_keys", user), "confirm", reason="Leaked")
    assert response.status_code == 302
    assert not user.api_keys.filter(revoked_at__isnull=True).exists()


# --- bad input: a form error and nothing written ------------------------------------------


@pytest.mark.parametrize(("action", "data", "message"), [
    ("grant", {"amount": "0", "kind": "ADJUSTMENT", "reason": "x"}, "greater than or equal"),
    ("grant", {"amount": "-3", "kind": "ADJUSTMENT", "reason": "x"}, "greater than or equal"),
    ("grant", {"amount": "5", "kind": "ADJUSTMENT", "reason": ""}, "A reason is required."),
    ("grant", {"amount": "5", "kind": "REFUND", "reason": "x"}, "Select a valid choice"),
    ("grant", {"amount": "5", "kind": "ADJUSTMENT", "reason": "x",
               "expires_at": "2001-01-01T00:00"}, "must be in the future"),
    ("grant", {"amount": "0.0000001", "kind": "ADJUSTMENT", "reason": "x"}, "decimal places"),
    ("adjust", {"amount": "0", "reason": "x"}, "cannot be zero"),
    ("adjust", {"amount": "-50", "reason": "x"}, "Insufficient credits"),
    ("adjust", {"amount": "5", "reason": " "}, "A reason is required."),
    ("refund", {"amount": "0", "reason": "x"}, "greater than or equal"),
    ("refund", {"amount": "abc", "reason": "x"}, "Enter a number"),
    ("revoke_keys", {"reason": ""}, "A reason is required."),
])
def test_bad_user_action_input_is_a_form_error(as_staff, finance, user, fund, action, data,
                                               message):
    fund(user, 10)
    client = as_staff(finance)
    for step in ("preview", "confirm"):
        response = submit(client, user_action_url(action, user), step, **data)
        assert response.status_code == 200
        assert any(message in e for e in errors_of(response)), errors_of(response)
    user.refresh_from_db()
    assert user.credit_balance == 10 * USD and not StaffAction.objects.exists()


def test_bad_grant_action_input_is_a_form_error(as_staff, finance, user, fund):
    grant = fund(user, 10)
    client = as_staff(finance)
    services.void_grant(grant=grant, reason="earlier", actor=finance)
    for action, data, message in [
        ("void", {"reason": "again"}, "already voided"),
        ("expire_now", {"reason": "x"}, "was voided"),
        ("change_expiry", {"reason": "x"}, "Give the new expiry"),
    ]:
        response = submit(client, grant_action_url(action, grant), "confirm", **data)
        assert response.status_code == 200
        assert any(message in e for e in errors_of(response)), (action, errors_of(response))
    live = fund(user, 1)
    response = submit(client, grant_action_url("void", live), "confirm", reason="")
    assert "A reason is required." in errors_of(response)
    assert StaffAction.objects.count() == 0


# --- bulk ----------------------------------------------------------------------------------


def test_bulk_action_on_selected_users_goes_through_the_same_confirmation(
        as_staff, support, make_user):
    a, b = make_user(), make_user()
    client = as_staff(support)
    response = client.post(reverse("admin:accounts_user_changelist"),
                           {"action": "money_grant", "_selected_action": [a.pk, b.pk]})
    assert response.status_code == 302
    url = response["Location"]
    assert url == user_action_url("grant", a, b)
    form = client.get(url)
    assert a.email.encode() in form.content and b.email.encode() in form.content
    done = submit(client, url, "confirm", amount="3", kind=GrantKind.ADJUSTMENT, reason="Outage")
    assert done.status_code == 302
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.credit_balance == b.credit_balance == 3 * USD
    assert StaffAction.objects.count() == 2


def test_bulk_actions_offered_follow_permissions(as_staff, support):
    response = as_staff(support).get(reverse("admin:accounts_user_changelist"))
    offered = [value for value, _ in response.context["action_form"].fields["action"].choices]
    assert "money_grant" in offered and "money_refund" in offered
    assert "money_adjust" not in offered


# --- four-eyes through the admin -------------------------------------------------------------


def test_four_eyes_in_admin(client, finance, finance2, user, settings):
    settings.ADMIN_APPROVAL_THRESHOLD_USD = "100"
    client.force_login(finance)
    response = submit(client, user_action_url("grant", user), "confirm", amount="250",
                      kind=GrantKind.PURCHASED, reason="Invoice 9")
    assert response.status_code == 302
    action = StaffAction.objects.get()
    assert action.status == StaffActionStatus.PENDING
    page = client.get(reverse("admin:credits_staffaction_change", args=[action.pk]))
    # The requester is offered a withdrawal, never an approval (issue 15).
    assert b"Approve\xe2\x80\xa6" not in page.content and b"Withdraw" in page.content
    approve = (reverse("admin:credits_staffaction_money_action", kwargs={"action": "approve"})
               + f"?ids={action.pk}")
    own = submit(client, approve, "confirm", note="")
    assert any("second staff member" in e for e in errors_of(own))
    client.force_login(finance2)
    page = client.get(reverse("admin:credits_staffaction_change", args=[action.pk]))
    assert b"Approve\xe2\x80\xa6" in page.content and b"Reject\xe2\x80\xa6" in page.content
    assert submit(client, approve, "confirm", note="Checked").status_code == 302
    again = submit(client, approve, "confirm", note="Twice?")
    assert any("already applied" in e for e in errors_of(again))
    user.refresh_from_db()
    assert user.credit_balance == 250 * USD
    assert_books_balance(user.pk)


def test_rejection_in_admin_needs_a_reason_and_writes_nothing(client, finance, finance2, user):
    client.force_login(finance)
    submit(client, user_action_url("adjust", user), "confirm", amount="500", reason="Deal")
    action = StaffAction.objects.get()
    reject = (reverse("admin:credits_staffaction_money_action", kwargs={"action": "reject"})
              + f"?ids={action.pk}")
    client.force_login(finance2)
    assert "A reason is required." in errors_of(submit(client, reject, "confirm", note=""))
    assert submit(client, reject, "confirm", note="Not approved").status_code == 302
    action.refresh_from_db()
    user.refresh_from_db()
    assert action.status == StaffActionStatus.REJECTED and user.credit_balance == 0


def test_audit_view_lists_every_action_read_only(client, finance, user, fund):
    grant = fund(user, 5)
    client.force_login(finance)
    submit(client, grant_action_url("void", grant), "confirm", reason="Chargeback")
    response = client.get(reverse("admin:credits_staffaction_changelist"))
    assert response.status_code == 200
    assert b"Chargeback" in response.content and b"Voided $5.00" in response.content
    action = StaffAction.objects.get()
    change = reverse("admin:credits_staffaction_change", args=[action.pk])
    assert client.post(change, {"reason": "edited"}).status_code == 403


# --- read-only history -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["ledgerentry", "creditgrant", "credithold", "staffaction"])
def test_history_is_read_only_even_for_superusers(client, make_staff, user, fund, model):
    fund(user, 5)
    services.authorize(user=user, amount_micros=USD)
    root = make_staff("root@tokenbank.test", superuser=True)
    client.force_login(root)
    from credits import staff_actions

    staff_actions.grant_credit(staff=root, user=user, amount_micros=USD, reason="x")
    obj = {"ledgerentry": LedgerEntry, "creditgrant": CreditGrant,
           "staffaction": StaffAction}.get(model)
    if obj is None:
        from credits.models import CreditHold as obj
    pk = obj.objects.filter(user=user).first().pk
    assert client.get(reverse(f"admin:credits_{model}_change", args=[pk])).status_code == 200
    assert client.post(reverse(f"admin:credits_{model}_change", args=[pk]),
                       {"amount_micros": "1"}).status_code == 403
    assert client.get(reverse(f"admin:credits_{model}_add")).status_code == 403
    assert client.post(reverse(f"admin:credits_{model}_delete", args=[pk]),
                       {"post": "yes"}).status_code == 403
    assert obj.objects.filter(pk=pk).exists()


def test_ledger_entries_export_as_csv_with_exact_amounts(client, make_staff, user, fund):
    fund(user, 2)
    services.use_credits(user=user, amount_micros=125)
    client.force_login(make_staff("root@tokenbank.test", superuser=True))
    ids = list(LedgerEntry.objects.values_list("pk", flat=True))
    response = client.post(reverse("admin:credits_ledgerentry_changelist"),
                           {"action": "export_as_csv", "_selected_action": ids})
    assert response["Content-Type"] == "text/csv"
    lines = response.content.decode().splitlines()
    assert lines[0].startswith("id,created_at,user,entry_type,amount_usd")
    assert any(",USAGE,-0.000125," in line for line in lines)
    assert any(",GRANT,2.000000," in line for line in lines)


def test_ledger_filters_by_user_type_and_date(client, make_staff, make_user, fund):
    a, b = make_user(), make_user()
    fund(a, 1)
    fund(b, 2)
    client.force_login(make_staff("root@tokenbank.test", superuser=True))
    url = reverse("admin:credits_ledgerentry_changelist")
    today = timezone.now().date().isoformat()
    response = client.get(url, {"user_id": a.pk, "entry_type__exact": "GRANT",
                                "created_at__gte": f"{today}T00:00:00+00:00"})
    rows = list(response.context["cl"].result_list)
    assert [e.user_id for e in rows] == [a.pk]


# --- all of a user's credit ---------------------------------------------------------------------------------


def test_bulk_expire_promotional_credit_of_selected_users(as_staff, finance, make_user, fund):
    a, b = make_user(), make_user()
    fund(a, 5, kind=GrantKind.PROMOTIONAL)
    fund(a, 7)  # purchased: untouched
    fund(b, 3, kind=GrantKind.PROMOTIONAL)
    client = as_staff(finance)
    response = client.post(reverse("admin:accounts_user_changelist"),
                           {"action": "money_expire_all", "_selected_action": [a.pk, b.pk]})
    url = response["Location"]
    done = submit(client, url, "confirm", grant_kind=GrantKind.PROMOTIONAL, reason="Abuse ring")
    assert done.status_code == 302
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.credit_balance, b.credit_balance) == (7 * USD, 0)
    assert StaffAction.objects.filter(kind="EXPIRE_NOW").count() == 2
    again = submit(client, url, "confirm", grant_kind=GrantKind.PROMOTIONAL, reason="Again")
    assert any("no promotional credit left" in e for e in errors_of(again))
    assert_books_balance(a.pk, b.pk)


def test_void_and_extend_all_credit_left_of_a_user(as_staff, finance, user, fund):
    fund(user, 2)
    fund(user, 3, kind=GrantKind.PROMOTIONAL)
    client = as_staff(finance)
    later = (timezone.now() + dt.timedelta(days=60)).replace(second=0, microsecond=0)
    response = submit(client, user_action_url("change_expiry_all", user), "confirm",
                      grant_kind="", expires_at=later.strftime("%Y-%m-%dT%H:%M"),
                      reason="Apology")
    assert response.status_code == 302
    assert set(CreditGrant.objects.filter(user=user).values_list("expires_at", flat=True)) == {
        later}
    assert submit(client, user_action_url("void_all", user), "confirm", grant_kind="",
                  reason="Closed account").status_code == 302
    user.refresh_from_db()
    assert user.credit_balance == 0
    assert_books_balance(user.pk)


def test_promotion_admin_creates_a_variant_and_kill_switch_action(client, finance):
    client.force_login(finance)
    response = client.post(reverse("admin:credits_promotion_add"), {
        "name": "Winter", "kind": "FIRST_TOKEN", "is_active": "on",
        "active_from_0": "2026-01-01", "active_from_1": "00:00:00",
        "amount_usd": "12.50", "window_seconds": "120", "expiry_days": "14",
        "variants-TOTAL_FORMS": "0", "variants-INITIAL_FORMS": "0",
        "variants-MIN_NUM_FORMS": "0", "variants-MAX_NUM_FORMS": "1000",
    })
    assert response.status_code == 302, response.context["adminform"].form.errors
    winter = Promotion.objects.get(name="Winter")
    assert winter.amount_micros == 12_500_000 and winter.variants.count() == 1
    response = client.post(reverse("admin:credits_promotion_changelist"),
                           {"action": "kill_switch", "_selected_action": [winter.pk]})
    winter.refresh_from_db()
    assert response.status_code == 302 and not winter.is_active
    response = client.post(reverse("admin:credits_promotion_changelist"),
                           {"action": "reactivate", "_selected_action": [winter.pk]})
    winter.refresh_from_db()
    assert response.status_code == 302 and winter.is_active
    assert LogEntry.objects.filter(object_id=str(winter.pk),
                                   change_message__startswith="Reactivated").exists()


def test_support_cannot_edit_promotions(client, support):
    client.force_login(support)
    assert client.get(reverse("admin:credits_promotion_add")).status_code == 403
