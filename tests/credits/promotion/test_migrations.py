"""The abuse controls' data migrations: the normalized emails and the claims they fill in."""

import datetime as dt
import importlib

import pytest
from django.apps import apps as global_apps
from django.utils import timezone

from accounts.models import User
from credits.models import CreditGrant, PromotionClaim
from inference.services import record_first_token

_fill_normalized = importlib.import_module("accounts.migrations.0003_abuse_controls")
_claims = importlib.import_module("credits.migrations.0007_abuse_controls")


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
