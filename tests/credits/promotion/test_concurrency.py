"""The promotion under races on PostgreSQL (real threads): one award per user, the global spend
cap and the sign-up velocity limit hold."""

import datetime as dt

import pytest
from django.core import mail
from django.utils import timezone

from accounts.models import User
from accounts.services import register_user
from credits.models import CreditGrant, EntryType, GrantKind, LedgerEntry, Promotion, PromotionClaim
from credits.promotion.award import apply_first_token_promotion
from credits.promotion.messages import WITHHELD_IP
from inference.services import record_first_token
from tests.books import USD, assert_books_balance
from tests.concurrency import run_concurrently
from tests.seeds import seed_demo_models

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_first_tokens_never_grant_past_the_cap(settings, eager_tasks):
    settings.PROMOTION_CAP_USD_PER_HOUR = "50"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    Promotion.objects.update(is_active=False)
    promotion = Promotion.objects.create(
        name="Race", active_from=timezone.now() - dt.timedelta(days=1), amount_micros=20 * USD,
        window_seconds=180, expiry_days=30)
    User.objects.create_user("ops@tokenbank.test", "correct-horse-battery", is_staff=True)
    ids = [User.objects.create_user(f"racer{i}@example.com", "correct-horse-battery").pk
           for i in range(8)]

    results = run_concurrently(lambda i: record_first_token(user_id=ids[i]), len(ids))

    assert all(r is True for r in results), results  # every first token was stamped
    grants = CreditGrant.objects.filter(kind=GrantKind.PROMOTIONAL)
    assert grants.count() == 2
    assert sum(grants.values_list("amount_micros", flat=True)) <= 50 * USD
    assert sum(PromotionClaim.objects.values_list("amount_micros", flat=True)) == 40 * USD
    promotion.refresh_from_db()
    assert promotion.is_active is False and promotion.paused_reason
    refused = User.objects.filter(pk__in=ids, promotion_claimed=False)
    assert refused.count() == 6 and all(u.promotion_withheld_reason for u in refused)
    assert len([m for m in mail.outbox if "paused itself" in m.subject]) == 1
    assert_books_balance(*ids)


def test_simultaneous_sign_ups_from_one_address_do_not_pass_the_limit_together(settings):
    settings.SIGNUPS_PER_IP_PER_HOUR = 2
    # A fast hasher, so the sign-ups reach the count together rather than one by one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    results = run_concurrently(lambda i: register_user(
        email=f"burst{i}@example.com", password="a-long-passphrase-42",
        client_ip="198.51.100.44")[0].pk, 8)

    assert all(isinstance(r, int) for r in results), results  # every sign-up worked
    users = User.objects.filter(pk__in=results)
    assert users.filter(promotion_eligible=True).count() == 2
    assert set(users.filter(promotion_eligible=False).values_list(
        "promotion_withheld_reason", flat=True)) == {WITHHELD_IP}


def test_racing_first_calls_are_never_paid_from_credit_awaiting_verification(
        settings, live_server):
    """40 simultaneous first calls of a new user, verification on: whatever wins the first
    token, no call is paid from the $20 that waits for the email link (was: 5 of 40)."""
    import threading

    import httpx

    seed_demo_models()
    settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION = True
    user, _key, secret = register_user(email="racer@example.com", password="a-long-passphrase-42")
    barrier = threading.Barrier(40)
    statuses: list[int] = []

    def call(i: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as client:
            barrier.wait()
            statuses.append(client.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                json={"model": "demo-small", "max_tokens": 8,
                      "messages": [{"role": "user", "content": f"question {i}"}]}).status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [402] * 40  # nothing else to pay with, and no 500 (deadlock)
    grant = CreditGrant.objects.get(user=user, kind=GrantKind.PROMOTIONAL)
    assert grant.awaiting_verification
    assert (grant.remaining_micros, grant.held_micros) == (20 * USD, 0)
    assert not LedgerEntry.objects.filter(grant=grant, entry_type=EntryType.CAPTURE).exists()
    assert_books_balance(user.pk)


def test_twenty_concurrent_first_tokens_award_one_promotion(make_user):
    user = make_user()

    results = run_concurrently(lambda i: record_first_token(user_id=user.pk), 20)

    assert results.count(True) == 1 and results.count(False) == 19
    assert CreditGrant.objects.filter(user=user, kind=GrantKind.PROMOTIONAL).count() == 1
    user.refresh_from_db()
    assert user.credit_balance == 20 * USD and user.promotion_claimed
    assert_books_balance(user.pk)


def test_concurrent_promotion_applications_grant_once(make_user):
    user = make_user()
    User.objects.filter(pk=user.pk).update(first_token_at=timezone.now())

    results = run_concurrently(lambda i: apply_first_token_promotion(user=user.pk), 20)

    grant_ids = {r.pk for r in results if isinstance(r, CreditGrant)}
    assert len(grant_ids) == 1, results
    assert User.objects.get(pk=user.pk).credit_balance == 20 * USD
