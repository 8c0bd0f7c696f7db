"""Issue 15, the staff console: what staff and customers see is true.

Internal reasons stay with staff (the customer reads the customer note, or the kind's
default, on every page, export and notification); customers are told of staff changes once;
confirmation pages show each account before and after, say when an action waits for a
second approver and what expiry a grant will get, and never offer what the viewer cannot do;
refunds are picked from recent calls; eligibility is computed when shown; the metrics count
only what they claim; the index says what the console is."""

import datetime as dt
import re

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from credits import notifications, services, staff_actions
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    Notification,
    NotificationEvent,
    StaffAction,
)
from credits.models.promotions import FIRST_TOKEN_PROMOTION_KEY
from credits.promotion import metrics
from tests.books import USD
from tests.credits.admin.test_console import errors_of, grant_action_url, submit, user_action_url
from tests.credits.admin.test_staff_controls import charged_call, review_url

SECRET = "Missed the 3-minute window by a few seconds; goodwill per ticket #1042"
ABUSE = "Abuse: duplicate account"


def customer_views(client, customer) -> str:
    """Everything the customer can read of their account: the dashboard, the API, the CSV."""
    client.force_login(customer)
    pages = [client.get(reverse("billing:dashboard")).content.decode(),
             client.get(reverse("billing:dashboard") + "?type=GRANT").content.decode(),
             b"".join(client.get(reverse("billing:history_csv")).streaming_content).decode()]
    api = client.get("/api/credits")
    if api.status_code == 200:
        pages.append(api.content.decode())
    return "\n".join(pages)


# --- internal reason vs customer note ----------------------------------------------------


def test_a_staff_grants_internal_reason_never_reaches_the_customer(client, finance, user):
    client.force_login(finance)
    assert submit(client, user_action_url("grant", user), "confirm", amount="20",
                  kind=GrantKind.ADJUSTMENT, reason=SECRET).status_code == 302
    grant = CreditGrant.objects.get(user=user)
    assert grant.internal_reason == SECRET  # staff keep it...
    assert StaffAction.objects.get().reason == SECRET
    seen = customer_views(client, user)
    assert "#1042" not in seen and "goodwill" not in seen  # ...the customer never sees it
    assert "Credit from TokenBank support" in seen


def test_the_customer_note_is_what_the_customer_reads(client, finance, user):
    client.force_login(finance)
    submit(client, user_action_url("grant", user), "confirm", amount="5",
           kind=GrantKind.ADJUSTMENT, reason=SECRET, customer_note="Sorry about the outage!")
    seen = customer_views(client, user)
    assert "Sorry about the outage!" in seen and "#1042" not in seen


def test_a_void_tells_the_customer_the_note_not_the_abuse_reason(
        client, finance, user, fund, django_capture_on_commit_callbacks, eager_tasks):
    promo = services.add_credit(user=user, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                                idempotency_key=FIRST_TOKEN_PROMOTION_KEY,
                                description="First-token promotion")
    notifications.notify(user_id=user.pk, event=NotificationEvent.PROMOTION_GRANTED)
    assert [n.event for n in notifications.recent_notifications(user=user)] == [
        NotificationEvent.PROMOTION_GRANTED]
    mail.outbox.clear()

    client.force_login(finance)
    with django_capture_on_commit_callbacks(execute=True):
        assert submit(client, grant_action_url("void", promo), "confirm",
                      reason=ABUSE).status_code == 302

    # Told once, by email and on the dashboard, with the default note.
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "$20.00 of credit was removed from your TokenBank account"
    assert "Credit removed by TokenBank support" in mail.outbox[0].body
    assert "Abuse" not in mail.outbox[0].body
    # The stale "$20 is usable" notice no longer stands.
    shown = notifications.recent_notifications(user=user)
    assert [n.event for n in shown] == [NotificationEvent.CREDIT_REMOVED]
    assert notifications.notify(user_id=user.pk, event=NotificationEvent.CREDIT_REMOVED) == []
    assert notifications.catch_up() == 0  # at most once
    seen = customer_views(client, user)
    assert ABUSE not in seen and "duplicate" not in seen
    assert "You earned $20.00" not in seen


@pytest.mark.parametrize(("action", "data", "event", "subject"), [
    ("grant", {"amount": "7", "kind": GrantKind.ADJUSTMENT}, NotificationEvent.CREDIT_ADDED,
     "$7.00 of credit was added to your TokenBank account"),
    ("adjust", {"amount": "-2"}, NotificationEvent.CREDIT_REMOVED,
     "$2.00 of credit was removed from your TokenBank account"),
    ("refund", {"amount": "3"}, NotificationEvent.CREDIT_REFUNDED,
     "You received a $3.00 refund from TokenBank"),
])
def test_each_staff_change_is_told_once_with_the_note(client, finance, user, fund, action, data,
                                                       event, subject):
    fund(user, 10)
    client.force_login(finance)
    assert submit(client, user_action_url(action, user), "confirm", reason="internal only",
                  customer_note="A note for you", **data).status_code == 302
    assert notifications.catch_up() == 1
    told = Notification.objects.get(user=user, event=event)
    assert told.subject == subject and told.summary.startswith("A note for you: ")
    assert "internal" not in told.summary and "internal" not in mail.outbox[-1].body
    assert notifications.catch_up() == 0


def test_an_expiry_change_is_told_with_the_new_date(client, finance, user, fund):
    grant = fund(user, 10, kind=GrantKind.PROMOTIONAL)
    client.force_login(finance)
    new = (timezone.now() + dt.timedelta(days=90)).replace(second=0, microsecond=0)
    assert submit(client, grant_action_url("change_expiry", grant), "confirm",
                  expires_at=new.strftime("%Y-%m-%dT%H:%M"), reason="ticket 5").status_code == 302
    assert notifications.catch_up() == 1
    told = Notification.objects.get(user=user, event=NotificationEvent.EXPIRY_CHANGED)
    assert new.strftime("%Y-%m-%d %H:%M UTC") in told.summary
    assert told.summary.startswith("Expiry date changed by TokenBank support")


def test_expire_now_is_told_once_not_twice(client, finance, user, fund):
    grant = fund(user, 10, kind=GrantKind.ADJUSTMENT)
    client.force_login(finance)
    assert submit(client, grant_action_url("expire_now", grant), "confirm",
                  reason="closing").status_code == 302
    assert notifications.catch_up() == 1  # the expiry change, not also "credit expired"
    told = Notification.objects.get(user=user)
    assert told.event == NotificationEvent.EXPIRY_CHANGED
    assert "$10.00 of adjustment credit expired" in told.summary


def test_rows_written_before_the_split_show_the_kind_default(client, finance, user):
    """History is never rewritten: a staff row from before (an actor, no internal reason)
    keeps its description for staff, and the customer reads the default instead."""
    grant = services.add_credit(user=user, amount_micros=5 * USD, kind=GrantKind.ADJUSTMENT,
                                description=SECRET, actor=finance)
    services.void_grant(grant=grant, reason=ABUSE, actor=finance)
    entry = LedgerEntry.objects.get(user=user, entry_type=EntryType.VOID)
    assert entry.description == ABUSE and entry.internal_reason == ""
    assert entry.customer_description == "Credit removed by TokenBank support"
    seen = customer_views(client, user)
    assert SECRET not in seen and ABUSE not in seen
    # The system's own lines (no actor) read as written.
    services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PURCHASED,
                        description="Purchased $1.00")
    assert "Purchased $1.00" in customer_views(client, user)


def test_a_clawback_keeps_its_reason_internal_and_tells_the_customer(client, make_staff, user):
    from credits.models import PromotionReview
    from credits.promotion.review import claw_back

    finance = make_staff("fin@tokenbank.test", "Finance")
    grant = services.add_credit(user=user, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                                idempotency_key=FIRST_TOKEN_PROMOTION_KEY)
    review = PromotionReview.objects.create(grant=grant, user=user, signals="velocity",
                                            created_at=timezone.now())
    claw_back(review=review, actor=finance, reason="farm of 40 accounts")
    assert notifications.catch_up() == 1
    told = Notification.objects.get(user=user)
    assert told.summary == ("Promotional credit reversed after review: $20.00 was removed "
                            "from your balance.")
    assert "farm" not in customer_views(client, user)


# --- confirmation pages ----------------------------------------------------------------


def test_confirmation_shows_each_account_before_and_after_and_applies_at_once(
        client, finance, user, fund):
    fund(user, 10)
    client.force_login(finance)
    page = submit(client, user_action_url("grant", user), "preview", amount="20",
                  kind=GrantKind.ADJUSTMENT, reason="x")
    html = page.content.decode()
    [effect] = page.context["effects"]
    assert (effect["balance_before"], effect["balance_after"]) == ("$10.00", "$30.00")
    assert (effect["available_before"], effect["available_after"]) == ("$10.00", "$30.00")
    assert "This applies as soon as you confirm." in html
    assert "never expires" in html
    assert not StaffAction.objects.exists() and CreditGrant.objects.filter(user=user).count() == 1


def test_confirmation_says_plainly_when_it_waits_for_a_second_approver(
        client, finance, user, settings):
    settings.ADMIN_APPROVAL_THRESHOLD_USD = "100"
    settings.PROMOTION_EXPIRY_DAYS = 30
    client.force_login(finance)
    page = submit(client, user_action_url("grant", user), "preview", amount="250",
                  kind=GrantKind.PROMOTIONAL, reason="deal")
    html = page.content.decode()
    assert "This will wait for a second approver." in html and "above $100.00" in html
    assert "Confirm: request approval" in html
    [effect] = page.context["effects"]
    assert (effect["balance_before"], effect["balance_after"]) == ("$0.00", "$250.00")
    # The real expiry a promotional grant gets: PROMOTION_EXPIRY_DAYS from now.
    expected = (timezone.now() + dt.timedelta(days=30)).strftime("%Y-%m-%d")
    assert re.search(rf"expires {expected} \d\d:\d\d UTC", html)
    assert "counted from the moment the grant is approved" in html
    assert not CreditGrant.objects.exists() and not StaffAction.objects.exists()


def test_the_requester_is_not_offered_to_approve_their_own_request(
        client, finance, finance2, user, settings):
    settings.ADMIN_APPROVAL_THRESHOLD_USD = "100"
    client.force_login(finance)
    submit(client, user_action_url("grant", user), "confirm", amount="250",
           kind=GrantKind.ADJUSTMENT, reason="deal")
    action = StaffAction.objects.get()
    page = client.get(review_url("approve", action))
    html = page.content.decode()
    assert page.status_code == 200
    assert "You asked for it: a second staff member must approve it." in html
    assert 'value="confirm"' not in html and 'value="preview"' not in html  # no form at all
    change = reverse("admin:credits_staffaction_change", args=[action.pk])
    listing = client.get(change).content.decode()
    assert ">Approve…</a>" not in listing and ">Withdraw…</a>" in listing
    # The second staff member is offered both.
    client.force_login(finance2)
    listing = client.get(change).content.decode()
    assert ">Approve…</a>" in listing and ">Reject…</a>" in listing
    assert 'value="preview"' in client.get(review_url("approve", action)).content.decode()


def test_grant_links_offer_only_what_the_viewer_may_do(client, support, finance, user, fund):
    fund(user, 5)
    url = reverse("admin:accounts_user_change", args=[user.pk])
    client.force_login(support)
    assert "Void the rest of the grant" not in client.get(url).content.decode()
    client.force_login(finance)
    assert "Void the rest of the grant" in client.get(url).content.decode()


# --- refunds picked from recent calls ---------------------------------------------------


def test_a_refund_is_picked_from_recent_calls_with_the_charge_prefilled(client, support, user):
    charged_call(user, "req_abc123", 1_234_567)
    client.force_login(support)
    url = user_action_url("refund", user)
    page = client.get(url)
    [call] = page.context["recent_calls"]
    assert call["request_id"] == "req_abc123" and call["refundable"] == "$1.234567"
    picked = client.get(call["pick_url"])
    assert picked.context["form"].initial == {"usage_reference": "req_abc123",
                                              "amount": "1.234567"}
    assert submit(client, url, "confirm", usage_reference="req_abc123", amount="1.234567",
                  reason="bad output").status_code == 302
    # Refunded in full: the list says so, and the customer sees a refund.
    again = client.get(url).context["recent_calls"][0]
    assert not again["can_refund"] and again["refunded"] == "$1.234567"
    client.force_login(user)
    dashboard = client.get(reverse("billing:dashboard") + "?type=REFUND").content.decode()
    assert "Refund from TokenBank support" in dashboard and "bad output" not in dashboard


# --- eligibility computed when shown ------------------------------------------------------


def test_user_page_and_list_filter_agree_on_eligibility_at_the_time_of_viewing(
        client, support, make_user, settings):
    settings.PROMOTION_WINDOW_SECONDS = 180
    late = make_user("late@example.com")
    User.objects.filter(pk=late.pk).update(date_joined=timezone.now() - dt.timedelta(minutes=4))
    fresh = make_user("fresh@example.com")
    from credits.models import PromotionAssignment
    PromotionAssignment.objects.filter(user__in=[late, fresh]).delete()  # settings terms
    client.force_login(support)
    late_page = client.get(reverse("admin:accounts_user_change", args=[late.pk])).content.decode()
    assert "Not eligible: the window closed" in late_page and "Eligible now" not in late_page
    fresh_page = client.get(reverse("admin:accounts_user_change", args=[fresh.pk])).content.decode()
    assert "Eligible now ✓" in fresh_page
    listed = client.get(reverse("admin:accounts_user_changelist") + "?eligible=yes")
    emails = {u.email for u in listed.context["cl"].result_list}
    assert "fresh@example.com" in emails and "late@example.com" not in emails


# --- metrics count only what they claim -------------------------------------------------


def test_metrics_leave_out_staff_accounts_and_staff_grants(make_user, make_staff, finance):
    today = timezone.now().date()
    customer = make_user("c@example.com")
    make_staff("newstaff@tokenbank.test")
    services.add_credit(user=customer, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                        idempotency_key=FIRST_TOKEN_PROMOTION_KEY)
    services.use_credits(user=customer, amount_micros=3 * USD)
    # A staff goodwill grant of promotional kind, and an adjustment taking credit back.
    staff_actions.grant_credit(staff=finance, user=customer, amount_micros=20 * USD,
                               kind=GrantKind.PROMOTIONAL, reason="goodwill")
    staff_actions.adjust_balance(staff=finance, user=customer, amount_micros=-2 * USD,
                                 reason="correction")
    rows = metrics.promotion_metrics(start=today, end=today)
    assert sum(r.signups for r in rows) == 1  # the customer, not the staff accounts
    assert sum(r.granted_micros for r in rows) == 20 * USD
    assert sum(r.used_micros for r in rows) == 3 * USD
    day = metrics.daily_trend(start=today, end=today)[-1]
    assert (day.signups, day.granted_micros, day.used_micros) == (1, 20 * USD, 3 * USD)
    assert metrics.today(now=timezone.now()).signups == 1


def test_metrics_page_has_a_daily_trend_chart_in_svg(client, finance, make_user):
    make_user("c@example.com")
    client.force_login(finance)
    html = client.get(reverse("admin:credits_promotion_metrics")).content.decode()
    assert html.count("<svg viewBox") >= 2 and 'class="s-signups"' in html
    assert "Sign-ups (1)" in html
    assert "http://" not in html.split("<svg", 1)[1].split("</svg>", 1)[0].replace(
        "http://www.w3.org", "")  # nothing from elsewhere


# --- the console says what it is -----------------------------------------------------------


def test_index_has_the_site_header_and_todays_numbers(client, finance, finance2, make_user,
                                                      settings):
    settings.ADMIN_APPROVAL_THRESHOLD_USD = "100"
    customer = make_user("c@example.com")
    services.add_credit(user=customer, amount_micros=20 * USD, kind=GrantKind.PROMOTIONAL,
                        idempotency_key=FIRST_TOKEN_PROMOTION_KEY)
    staff_actions.grant_credit(staff=finance2, user=customer, amount_micros=500 * USD,
                               reason="big")
    client.force_login(finance)
    page = client.get(reverse("admin:index"))
    html = page.content.decode()
    assert "TokenBank credit console" in html and "Django administration" not in html
    assert re.search(r'id="today-signups">1<', html)  # staff accounts are not sign-ups
    assert re.search(r'id="today-outstanding">\$20\.00<', html)
    assert re.search(r'id="today-pending">1<', html) and "approval waiting" in html
    assert 'id="today-first-tokens">0<' in html


def test_deleting_users_is_not_the_first_bulk_action_offered(client, make_staff):
    root = make_staff("root@tokenbank.test", superuser=True)
    client.force_login(root)
    page = client.get(reverse("admin:accounts_user_changelist"))
    choices = [value for value, _ in page.context["action_form"].fields["action"].choices
               if value]
    assert choices[0] != "delete_selected" and choices[-1] == "delete_selected"
    assert choices[0].startswith("money_")


def test_a_form_error_still_shows_without_a_500(client, finance, user):
    client.force_login(finance)
    page = submit(client, user_action_url("refund", user), "preview", usage_reference="nope",
                  amount="1", reason="x")
    assert page.status_code == 200 and errors_of(page)
