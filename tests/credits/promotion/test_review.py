"""Review of promotional grants (credits.promotion.review): soft signals flag a grant; staff confirm
it or claw back the unused credit."""

import pytest

from accounts.models import User
from credits import services
from credits.models import (
    EntryType,
    LedgerEntry,
    PromotionReview,
    ReviewStatus,
)
from credits.promotion.review import claw_back
from credits.selectors import get_user_credits
from tests.books import USD, assert_books_balance

from .conftest import first_token, signed_up


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
    # The reason is internal (issue 15): the customer reads the clawback's default note.
    assert "farmed sign-ups" in void.internal_reason
    assert void.customer_description == "Promotional credit reversed after review"
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
