"""The optional email verification (credits.promotion.verification): credit held until the
link is followed, voided after 24 hours; the alert on the dashboard and the onboarding page
while promotional credit waits for it, and "Resend the link" (at most one email a minute)."""

import datetime as dt
import threading

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from credits import services
from credits.exceptions import InsufficientCredits
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
)
from credits.promotion.messages import (
    VERIFY_ALREADY_DONE,
    VERIFY_RESEND_TOO_SOON,
    VERIFY_TO_SPEND,
    WITHHELD_IP,
)
from credits.promotion.verification import ResendOutcome, resend_verification, void_unverified_promotions
from credits.selectors import get_user_credits
from inference.services import record_first_token
from tests.books import USD, assert_books_balance

from .conftest import PASSWORD, first_token, promotion_json, signed_up

RESEND = "/accounts/verify-email/resend/"
ALERT = 'data-alert="verify_email"'


def earned(register, email: str) -> User:
    """Signed up (the sign-up's email two minutes ago) and generated a first token."""
    response = register(email)
    assert response.status_code == 201, response.content
    user = User.objects.get(pk=response.json()["user"]["id"])
    User.objects.filter(pk=user.pk).update(
        verification_email_sent_at=timezone.now() - dt.timedelta(minutes=2))
    record_first_token(user_id=user.pk)
    user.refresh_from_db()
    return user


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def verify_mails(outbox) -> list:
    return [m for m in outbox if "Verify" in m.subject]


def test_dashboard_and_onboarding_show_the_alert_while_credit_awaits_verification(
        live, settings, register):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = earned(register, "careful@example.com")
    grant = CreditGrant.objects.get(user=user, kind=GrantKind.PROMOTIONAL)
    deadline = grant.granted_at + dt.timedelta(hours=settings.PROMOTION_VERIFICATION_HOURS)
    client = logged_in(user)
    for url in ("/billing/", "/accounts/onboarding/"):
        html = client.get(url).content.decode()
        assert html.count(ALERT) == 1, url
        assert "Verify your email to unlock $20.00" in html
        assert "careful@example.com" in html
        assert f"{deadline:%b %-d, %Y %H:%M} UTC" in html
        assert f'action="{RESEND}"' in html and "Resend the link" in html
    # Locked credit is not offered as credit "to use", nor does it raise a low-balance alarm.
    dashboard = client.get("/billing/").content.decode()
    assert 'data-alert="promotion_available"' not in dashboard
    assert 'data-alert="low_balance"' not in dashboard


def test_no_alert_when_verification_is_off(live, register):
    user = earned(register, "quick@example.com")
    client = logged_in(user)
    dashboard = client.get("/billing/").content.decode()
    assert ALERT not in dashboard
    assert 'data-alert="promotion_available"' in dashboard
    assert ALERT not in client.get("/accounts/onboarding/").content.decode()


def test_no_alert_before_the_credit_is_earned(live, settings, register):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    register("early@example.com")
    client = logged_in(User.objects.get(email="early@example.com"))
    assert ALERT not in client.get("/billing/").content.decode()
    assert ALERT not in client.get("/accounts/onboarding/").content.decode()


def test_resend_sends_one_email_and_a_second_within_a_minute_is_refused(
        live, settings, register, mailoutbox, django_capture_on_commit_callbacks, eager_tasks):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = earned(register, "careful@example.com")
    client = logged_in(user)
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(RESEND, {"next": "/billing/"}, follow=True)
    assert first.redirect_chain == [("/billing/", 302)]
    assert "Link sent to careful@example.com." in first.content.decode()
    [message] = verify_mails(mailoutbox)
    assert message.to == ["careful@example.com"]
    with django_capture_on_commit_callbacks(execute=True):
        second = client.post(RESEND, {"next": "/accounts/onboarding/"}, follow=True)
    assert second.redirect_chain == [("/accounts/onboarding/", 302)]
    assert VERIFY_RESEND_TOO_SOON in second.content.decode()
    assert len(verify_mails(mailoutbox)) == 1

    # The resent link unlocks the credit: the alert is gone and the $20 is available.
    link = next(w for w in message.body.split() if "/accounts/verify-email/" in w)
    assert client.get(link.replace(settings.SITE_URL, "")).status_code == 200
    assert get_user_credits(user=user).available_micros == 20 * USD
    dashboard = client.get("/billing/").content.decode()
    assert ALERT not in dashboard
    assert "You have $20.00 of promotional credit to use" in dashboard
    assert ALERT not in client.get("/accounts/onboarding/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        after = client.post(RESEND, {"next": "/billing/"}, follow=True)
    assert VERIFY_ALREADY_DONE in after.content.decode()
    assert len(verify_mails(mailoutbox)) == 1


def test_resend_is_allowed_again_once_the_minute_has_passed(live, settings, register):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = earned(register, "patient@example.com")
    start = timezone.now()
    assert resend_verification(user=user, now=start) == ResendOutcome.SENT
    assert resend_verification(user=user, now=start + dt.timedelta(seconds=59)) == (
        ResendOutcome.TOO_SOON)
    assert resend_verification(user=user, now=start + dt.timedelta(seconds=61)) == (
        ResendOutcome.SENT)


def test_resend_right_after_sign_up_waits_for_the_minute(live, settings, register, mailoutbox):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    register("fresh@example.com")  # the sign-up itself emails the link
    client = logged_in(User.objects.get(email="fresh@example.com"))
    response = client.post(RESEND, follow=True)
    assert response.redirect_chain == [("/billing/", 302)]
    assert VERIFY_RESEND_TOO_SOON in response.content.decode()


def test_resend_needs_a_logged_in_post_with_a_csrf_token(live, settings, register, mailoutbox):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = earned(register, "careful@example.com")
    assert Client().post(RESEND).status_code == 302  # to the login page
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get(RESEND).status_code == 405
    assert client.post(RESEND).status_code == 403
    user.refresh_from_db()
    assert user.verification_email_sent_at < timezone.now() - dt.timedelta(minutes=1)


def test_resend_to_another_site_goes_back_to_the_dashboard(live, settings, register):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    client = logged_in(earned(register, "careful@example.com"))
    response = client.post(RESEND, {"next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == "/billing/"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_simultaneous_resends_send_one_email(live, settings, register, mailoutbox, eager_tasks):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = earned(register, "clicky@example.com")
    sent_at_sign_up = len(verify_mails(mailoutbox))  # committed for real in this test
    outcomes, barrier = [], threading.Barrier(6)

    def click():
        try:
            barrier.wait()
            outcomes.append(resend_verification(user=user))
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [ResendOutcome.SENT] + [ResendOutcome.TOO_SOON] * 5
    assert len(verify_mails(mailoutbox)) == sent_at_sign_up + 1


# --- the credit waits for the link -----------------------------------------------------


def _link(message) -> str:
    return next(word for word in message.body.split() if "/accounts/verify-email/" in word)


def test_verification_off_the_credit_is_spendable_at_once(live, register, mailoutbox):
    user = signed_up(register, "quick@example.com")
    first_token(user)
    credits = get_user_credits(user=user)
    assert (credits.balance_micros, credits.available_micros) == (20 * USD, 20 * USD)
    assert promotion_json(user)["withheld_reason"] is None
    assert not [m for m in mailoutbox if "Verify" in m.subject]


def test_verification_on_the_credit_waits_for_the_link(live, settings, register, mailoutbox, client,
                                                       django_capture_on_commit_callbacks,
                                                       eager_tasks):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    with django_capture_on_commit_callbacks(execute=True):
        user = signed_up(register, "careful@example.com")
    [message] = [m for m in mailoutbox if "Verify" in m.subject]
    assert message.to == ["careful@example.com"]
    grant = first_token(user)
    assert grant.awaiting_verification is True
    credits = get_user_credits(user=user)
    assert (credits.balance_micros, credits.available_micros) == (20 * USD, 0)
    assert promotion_json(user)["withheld_reason"] == VERIFY_TO_SPEND
    with pytest.raises(InsufficientCredits):
        services.authorize(user=user, amount_micros=USD)
    # Following the link unlocks it; the 24-hour sweep then leaves it alone.
    page = client.get(_link(message).replace(settings.SITE_URL, ""))
    assert page.status_code == 200 and b"verified" in page.content
    assert get_user_credits(user=user).available_micros == 20 * USD
    assert promotion_json(user)["withheld_reason"] is None
    later = timezone.now() + dt.timedelta(hours=25)
    assert void_unverified_promotions(now=later) == 0
    services.use_credits(user=user, amount_micros=USD)
    assert_books_balance(user.pk)


def test_unverified_credit_is_voided_after_24_hours(live, settings, register):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = signed_up(register, "ghost@example.com")
    grant = first_token(user)
    assert void_unverified_promotions(now=timezone.now() + dt.timedelta(hours=23)) == 0
    assert void_unverified_promotions(now=timezone.now() + dt.timedelta(hours=25)) == 1
    assert void_unverified_promotions(now=timezone.now() + dt.timedelta(hours=26)) == 0
    grant.refresh_from_db()
    assert grant.voided_at is not None
    assert get_user_credits(user=user).balance_micros == 0
    assert LedgerEntry.objects.get(entry_type=EntryType.VOID).amount_micros == -20 * USD
    assert_books_balance(user.pk)


def test_verification_on_calls_held_against_the_pending_credit_are_not_paid_from_it(
        live, settings, register):
    # Issue 12 #7: credit locked until the email is verified pays for nothing, not even
    # the calls that reserved against it while it was pending (was: they were served).
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = signed_up(register, "eager@example.com")
    hold = services.authorize(user=user, amount_micros=2 * USD)  # against the pending promotion
    assert hold.pending_promotion_micros == 2 * USD
    first_token(user)
    hold.refresh_from_db()
    assert hold.pending_promotion_micros == 2 * USD  # not backed by the locked grant
    with pytest.raises(InsufficientCredits):
        services.capture(hold=hold, amount_micros=USD)
    services.release(hold=hold)
    credits = get_user_credits(user=user)
    assert (credits.balance_micros, credits.available_micros) == (20 * USD, 0)
    assert not LedgerEntry.objects.filter(user=user, entry_type=EntryType.CAPTURE).exists()
    assert_books_balance(user.pk)


def test_a_forged_verification_link_is_refused(live, client, register):
    user = signed_up(register, "x@example.com")
    response = client.get("/accounts/verify-email/not-a-token/")
    assert response.status_code == 400 and b"not valid" in response.content
    user.refresh_from_db()
    assert user.email_verified_at is None


def test_the_onboarding_page_says_why_the_credit_is_withheld(live, settings, register, client):
    settings.SIGNUPS_PER_IP_PER_HOUR = 1
    signed_up(register, "one@example.com", ip="198.51.100.3")
    client.post("/accounts/signup/", {"email": "two@example.com", "password": PASSWORD},
                REMOTE_ADDR="198.51.100.3")
    page = client.get("/accounts/onboarding/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "No free credit for this account" in html
    assert WITHHELD_IP.split(",")[0] in html
    assert mail.outbox == [] or all("Verify" not in m.subject for m in mail.outbox)


def test_a_402_while_the_credit_awaits_verification_says_to_verify(live, settings, register):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    response = register("later@example.com")
    first_token(User.objects.get(email="later@example.com"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['api_key']}")
    call = client.post("/v1/chat/completions", {"model": "demo-small", "max_tokens": 8,
                                                "messages": [{"role": "user", "content": "hi"}]},
                       format="json")
    assert call.status_code == 402
    assert VERIFY_TO_SPEND in call.json()["error"]["message"]
