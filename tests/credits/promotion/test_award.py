"""Award side of the abuse controls: once per normalized email, promotions per network per
day, spend caps that pause the promotion, review flags with confirm / claw back, and the
optional email verification."""

import datetime as dt

import pytest
from django.core import mail
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
    Promotion,
    PromotionClaim,
    PromotionReview,
    ReviewStatus,
)
from credits.promotion.messages import (
    OFFER_PAUSED,
    VERIFY_TO_SPEND,
    WITHHELD_CLAIMED,
    WITHHELD_IP,
    WITHHELD_NETWORK_PROMOTIONS,
    WITHHELD_PAUSED,
)
from credits.promotion.review import claw_back
from credits.promotion.terms import live_promotion
from credits.promotion.verification import void_unverified_promotions
from credits.selectors import get_user_credits
from inference.services import record_first_token
from tests.books import USD, assert_books_balance

from .conftest import PASSWORD


@pytest.fixture
def live(db):
    """Only this $20 first-token promotion is live."""
    Promotion.objects.update(is_active=False)
    return Promotion.objects.create(name="Launch", active_from=timezone.now() - dt.timedelta(days=1),
                                    amount_micros=20 * USD, window_seconds=180, expiry_days=30)


def signed_up(register, email: str, ip: str = "10.0.0.1") -> User:
    response = register(email, ip=ip)
    assert response.status_code == 201, response.content
    return User.objects.get(pk=response.json()["user"]["id"])


def first_token(user: User) -> CreditGrant | None:
    record_first_token(user_id=user.pk)
    user.refresh_from_db()
    return CreditGrant.objects.filter(user=user, kind=GrantKind.PROMOTIONAL).first()


def promotion_json(user: User) -> dict:
    client = APIClient()
    client.force_authenticate(user)
    return client.get("/api/credits").json()["promotion"]


# --- once per normalized email -----------------------------------------------------------


def test_the_credit_is_given_once_per_normalized_email_even_after_the_account_is_gone(
        live, register):
    first = signed_up(register, "ada.lovelace@gmail.com")
    assert first_token(first).amount_micros == 20 * USD
    claim = PromotionClaim.objects.get()
    assert (claim.email_normalized, claim.user_id) == ("adalovelace@gmail.com", first.pk)
    # The account is closed and its address released (grants keep the row, so: renamed).
    User.objects.filter(pk=first.pk).update(email="closed-1@tokenbank.invalid",
                                            email_normalized="closed-1@tokenbank.invalid")
    again = signed_up(register, "adalovelace+again@gmail.com", ip="192.0.2.50")
    assert promotion_json(again)["withheld_reason"] == WITHHELD_CLAIMED
    assert first_token(again) is None
    assert PromotionClaim.objects.count() == 1


def test_the_claim_is_checked_again_when_the_credit_is_awarded(live, make_user):
    # An account that skipped the sign-up checks (created in a shell) still cannot claim twice.
    PromotionClaim.objects.create(email_normalized="grace@example.com", amount_micros=20 * USD,
                                  claimed_at=timezone.now())
    user = make_user("Grace@Example.com")
    assert first_token(user) is None
    assert user.promotion_eligible is False
    assert user.promotion_withheld_reason == WITHHELD_CLAIMED


# --- promotions per network per day ------------------------------------------------------


def test_promotions_per_network_per_day_are_limited_at_award_and_at_sign_up(live, settings, register):
    settings.PROMOTIONS_PER_NETWORK_PER_DAY = 1
    a = signed_up(register, "a@example.com", ip="203.0.113.5")
    b = signed_up(register, "b@example.com", ip="203.0.113.6")
    assert promotion_json(b)["eligible"] is True  # nobody claimed yet
    assert first_token(a) is not None
    assert first_token(b) is None
    assert promotion_json(b)["withheld_reason"] == WITHHELD_NETWORK_PROMOTIONS
    c = signed_up(register, "c@example.com", ip="203.0.113.7")
    assert promotion_json(c) | {"deadline": None, "seconds_remaining": None} == {
        "eligible": False, "claimed": False, "deadline": None, "seconds_remaining": None,
        "amount": "20.000000", "withheld_reason": WITHHELD_NETWORK_PROMOTIONS}
    # Elsewhere the offer is unaffected.
    assert first_token(signed_up(register, "d@example.com", ip="192.0.2.9")) is not None


def test_a_call_relying_on_a_withheld_promotion_says_why_and_charges_nothing(live, settings, register):
    settings.SIGNUPS_PER_IP_PER_HOUR = 1
    signed_up(register, "first@example.com", ip="198.51.100.1")
    response = register("second@example.com", ip="198.51.100.1")
    secret = response.json()["api_key"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    call = client.post("/v1/chat/completions", {"model": "demo-small", "max_tokens": 8,
                                                "messages": [{"role": "user", "content": "hi"}]},
                       format="json")
    assert call.status_code == 402
    error = call.json()["error"]
    assert error["type"] == "insufficient_credits" and WITHHELD_IP in error["message"]
    assert not LedgerEntry.objects.filter(user__email="second@example.com").exists()
    assert promotion_json(User.objects.get(email="second@example.com"))["withheld_reason"] == (
        WITHHELD_IP)


# --- spend caps --------------------------------------------------------------------------


def test_past_the_hourly_cap_the_promotion_pauses_itself_and_staff_are_told_once(
        live, settings, make_user, mailoutbox, eager_tasks, django_capture_on_commit_callbacks):
    settings.PROMOTION_CAP_USD_PER_HOUR = "50"
    make_user("ops@tokenbank.test", is_staff=True)
    users = [make_user(f"cap{i}@example.com") for i in range(4)]
    with django_capture_on_commit_callbacks(execute=True):
        grants = [first_token(u) for u in users[:3]]
    assert [g is not None for g in grants] == [True, True, False]
    live.refresh_from_db()
    assert live.is_active is False and "PROMOTION_CAP_USD_PER_HOUR" in live.paused_reason
    paused_mail = [m for m in mailoutbox if "paused itself" in m.subject]
    assert len(paused_mail) == 1 and paused_mail[0].to == ["ops@tokenbank.test"]
    # Everyone still waiting is told the offer is paused, never shown a stale offer.
    assert users[2].promotion_withheld_reason == WITHHELD_PAUSED
    status = promotion_json(users[3])
    assert status["eligible"] is False and status["withheld_reason"] == OFFER_PAUSED
    assert live_promotion() is None
    with django_capture_on_commit_callbacks(execute=True):
        assert first_token(users[3]) is None
    assert len([m for m in mailoutbox if "paused itself" in m.subject]) == 1
    assert sum(PromotionClaim.objects.values_list("amount_micros", flat=True)) == 40 * USD
    assert_books_balance()


def test_the_daily_cap_counts_the_last_24_hours(live, settings, make_user):
    settings.PROMOTION_CAP_USD_PER_DAY = "30"
    PromotionClaim.objects.create(email_normalized="old@example.com", amount_micros=20 * USD,
                                  claimed_at=timezone.now() - dt.timedelta(hours=25))
    assert first_token(make_user("one@example.com")) is not None
    assert first_token(make_user("two@example.com")) is None
    live.refresh_from_db()
    assert "PROMOTION_CAP_USD_PER_DAY" in live.paused_reason


# --- review: flagged, confirmed, clawed back ----------------------------------------------


@pytest.fixture
def finance_admin(client, make_user):
    staff = make_user("finance@tokenbank.test", is_staff=True, is_superuser=True)
    client.force_login(staff)
    return client


def test_an_honest_sign_up_is_not_flagged(live, register):
    assert first_token(signed_up(register, "honest@example.com")) is not None
    assert not PromotionReview.objects.exists()


def test_soft_signals_flag_the_grant_for_review(live, register):
    signed_up(register, "neighbour@example.com", ip="198.51.100.8")
    first_token(User.objects.get(email="neighbour@example.com"))
    user = signed_up(register, "farmer+7@example.com", ip="198.51.100.8")
    grant = first_token(user)
    review = PromotionReview.objects.get(grant=grant)
    assert review.status == ReviewStatus.FLAGGED
    assert set(review.signals.split(",")) == {"network_repeat", "shared_ip", "plus_tag"}


def _flagged(register, email="farmer+1@example.com"):
    user = signed_up(register, email)
    grant = first_token(user)
    return user, grant, PromotionReview.objects.get(grant=grant)


def test_clawback_voids_only_the_unused_promotional_credit(live, register, fund, finance_admin):
    user, grant, review = _flagged(register)
    purchased = fund(user, 10)
    services.use_credits(user=user, amount_micros=3 * USD, reference="call-1")  # promo first
    response = finance_admin.post("/admin/credits/promotionreview/", {
        "action": "claw_back", "_selected_action": [review.pk], "apply": "1",
        "reason": "farmed sign-ups"})
    assert response.status_code == 302
    review.refresh_from_db()
    assert review.status == ReviewStatus.CLAWED_BACK and review.clawed_back_micros == 17 * USD
    assert review.decided_by.email == "finance@tokenbank.test" and review.note == "farmed sign-ups"
    void = LedgerEntry.objects.get(entry_type=EntryType.VOID)
    assert (void.grant_id, void.amount_micros) == (grant.pk, -17 * USD)
    assert "farmed sign-ups" in void.description
    purchased.refresh_from_db()
    assert purchased.remaining_micros == 10 * USD
    assert get_user_credits(user=user).balance_micros == 10 * USD
    assert_books_balance(user.pk)


def test_the_clawback_page_asks_for_a_reason_first(live, register, finance_admin):
    _user, _grant, review = _flagged(register)
    page = finance_admin.post("/admin/credits/promotionreview/", {
        "action": "claw_back", "_selected_action": [review.pk]})
    assert page.status_code == 200 and b"Claw back" in page.content
    review.refresh_from_db()
    assert review.status == ReviewStatus.FLAGGED and not LedgerEntry.objects.filter(
        entry_type=EntryType.VOID).exists()


def test_confirm_keeps_the_grant_and_a_decided_review_is_not_decided_again(
        live, register, finance_admin, make_user):
    user, grant, review = _flagged(register)
    finance_admin.post("/admin/credits/promotionreview/", {
        "action": "confirm", "_selected_action": [review.pk]})
    review.refresh_from_db()
    assert review.status == ReviewStatus.CONFIRMED
    finance_admin.post("/admin/credits/promotionreview/", {
        "action": "claw_back", "_selected_action": [review.pk], "apply": "1", "reason": "late"})
    review.refresh_from_db()
    grant.refresh_from_db()
    assert review.status == ReviewStatus.CONFIRMED and grant.voided_at is None
    assert get_user_credits(user=user).balance_micros == 20 * USD
    with pytest.raises(Exception, match="already decided"):
        claw_back(review=review, actor=make_user("x@tokenbank.test"), reason="again")


def test_the_review_list_renders_for_staff(live, register, finance_admin):
    _flagged(register)
    page = finance_admin.get("/admin/credits/promotionreview/")
    assert page.status_code == 200 and b"farmer+1@example.com" in page.content


# --- optional email verification ------------------------------------------------------------


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


def test_verification_on_the_call_that_earned_it_is_served_from_it(live, settings, register):
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user = signed_up(register, "eager@example.com")
    hold = services.authorize(user=user, amount_micros=2 * USD)  # against the pending promotion
    assert hold.pending_promotion_micros == 2 * USD
    first_token(user)
    hold.refresh_from_db()
    assert hold.pending_promotion_micros == 0
    services.capture(hold=hold, amount_micros=USD)
    credits = get_user_credits(user=user)
    assert (credits.balance_micros, credits.available_micros) == (19 * USD, 0)
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
