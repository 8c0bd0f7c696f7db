"""The promotion reviews in admin (credits.admin.abuse): who may decide them."""

import pytest

from credits.models import EntryType, LedgerEntry, ReviewStatus
from inference.services import record_first_token


@pytest.fixture
def flagged(db, make_user):
    user = make_user("farmer+2@example.com")
    record_first_token(user_id=user.pk)
    return user.promotion_reviews.get()


def test_finance_claws_back_and_support_may_only_look(client, support, finance, flagged):
    client.force_login(support)
    listing = client.get("/admin/credits/promotionreview/")
    assert listing.status_code == 200 and b"farmer+2@example.com" in listing.content
    assert b"claw_back" not in listing.content
    client.post("/admin/credits/promotionreview/", {
        "action": "claw_back", "_selected_action": [flagged.pk], "apply": "1", "reason": "x"})
    flagged.refresh_from_db()
    assert flagged.status == ReviewStatus.FLAGGED

    client.force_login(finance)
    client.post("/admin/credits/promotionreview/", {
        "action": "claw_back", "_selected_action": [flagged.pk], "apply": "1",
        "reason": "one person, many accounts"})
    flagged.refresh_from_db()
    assert flagged.status == ReviewStatus.CLAWED_BACK
    assert LedgerEntry.objects.filter(entry_type=EntryType.VOID, grant=flagged.grant).exists()
