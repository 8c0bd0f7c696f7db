"""Who may decide reviews in admin, and the migrations that fill the new columns."""

import datetime as dt
import importlib

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Group
from django.utils import timezone

from accounts.models import User
from credits.models import CreditGrant, EntryType, LedgerEntry, PromotionClaim, ReviewStatus
from inference.services import record_first_token

_groups = importlib.import_module("credits.migrations.0005_default_promotion_and_staff_groups")
_abuse_permissions = importlib.import_module("credits.migrations.0008_abuse_control_permissions")
_fill_normalized = importlib.import_module("accounts.migrations.0003_abuse_controls")
_claims = importlib.import_module("credits.migrations.0007_abuse_controls")


@pytest.fixture
def staff_in(db):
    _groups.create_groups(global_apps, None)
    _abuse_permissions.add_permissions(global_apps, None)

    def make(group: str) -> User:
        staff = User.objects.create_user(f"{group.lower()}@tokenbank.test", "correct-horse-battery",
                                         is_staff=True)
        staff.groups.add(Group.objects.get(name=group))
        return User.objects.get(pk=staff.pk)

    return make


@pytest.fixture
def flagged(db, make_user):
    user = make_user("farmer+2@example.com")
    record_first_token(user_id=user.pk)
    return user.promotion_reviews.get()


def test_finance_claws_back_and_support_may_only_look(client, staff_in, flagged):
    client.force_login(staff_in("Support"))
    listing = client.get("/admin/credits/promotionreview/")
    assert listing.status_code == 200 and b"farmer+2@example.com" in listing.content
    assert b"claw_back" not in listing.content
    client.post("/admin/credits/promotionreview/", {
        "action": "claw_back", "_selected_action": [flagged.pk], "apply": "1", "reason": "x"})
    flagged.refresh_from_db()
    assert flagged.status == ReviewStatus.FLAGGED

    client.force_login(staff_in("Finance"))
    client.post("/admin/credits/promotionreview/", {
        "action": "claw_back", "_selected_action": [flagged.pk], "apply": "1",
        "reason": "one person, many accounts"})
    flagged.refresh_from_db()
    assert flagged.status == ReviewStatus.CLAWED_BACK
    assert LedgerEntry.objects.filter(entry_type=EntryType.VOID, grant=flagged.grant).exists()


@pytest.mark.django_db
def test_existing_accounts_get_their_normalized_email_and_the_oldest_keeps_a_collision():
    older = User.objects.create_user("Ada.Lovelace@gmail.com", "correct-horse-battery")
    newer = User.objects.create_user("other@example.com", "correct-horse-battery")
    # Rows as they were before the column: a later account whose address folds the same way.
    User.objects.filter(pk=newer.pk).update(email="adalovelace+x@gmail.com")
    User.objects.update(email_normalized=None)
    _fill_normalized.fill_email_normalized(global_apps, None)
    assert dict(User.objects.values_list("pk", "email_normalized")) == {
        older.pk: "adalovelace@gmail.com", newer.pk: None}


@pytest.mark.django_db
def test_sign_up_credit_granted_before_the_controls_counts_as_claimed(make_user):
    user = make_user("early@example.com")
    record_first_token(user_id=user.pk, at=timezone.now())
    PromotionClaim.objects.all().delete()
    _claims.claim_existing_promotions(global_apps, None)
    claim = PromotionClaim.objects.get()
    grant = CreditGrant.objects.get(user=user)
    assert (claim.email_normalized, claim.grant_id, claim.amount_micros) == (
        "early@example.com", grant.pk, grant.amount_micros)
    assert claim.claimed_at - grant.granted_at < dt.timedelta(seconds=1)


def test_staff_cannot_add_a_user_whose_normalized_address_is_taken(client, make_user):
    make_user("ada@gmail.com")
    client.force_login(make_user("root@tokenbank.test", is_staff=True, is_superuser=True))
    response = client.post("/admin/accounts/user/add/", {
        "email": "a.d.a+2@googlemail.com", "usable_password": "true",
        "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"})
    assert response.status_code == 200
    assert "An account with this email address already exists" in response.content.decode()
    assert User.objects.count() == 2
