"""Simultaneous HTTP calls against a real server on PostgreSQL."""

import threading

import httpx
import pytest
from django.core.management import call_command

from accounts.services import register_user
from credits.models import CreditGrant, CreditHold, GrantKind, HoldStatus
from inference.models import UsageRecord

pytestmark = [pytest.mark.postgres]


def test_thirty_simultaneous_first_calls_over_http_earn_exactly_one_promotion(live_server,
                                                                               demo_models):
    user, _key, secret = register_user(email="burst@example.com", password="a-long-passphrase-42")
    barrier = threading.Barrier(30)
    responses: list = [None] * 30

    def call(i: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as client:
            barrier.wait()
            responses[i] = client.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                json={"model": "demo-small", "max_tokens": 12,
                      "messages": [{"role": "user", "content": f"question {i}"}]})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.status_code for r in responses] == [200] * 30
    assert sum(r.headers["X-Promotion-Applied"] == "true" for r in responses
               if "X-Promotion-Applied" in r.headers) == 1
    assert CreditGrant.objects.filter(user=user, kind=GrantKind.PROMOTIONAL).count() == 1
    charged = sum(int(r.headers["X-Credits-Charged"].replace(".", "")) for r in responses)
    user.refresh_from_db()
    assert user.credit_balance == 20_000_000 - charged
    assert UsageRecord.objects.filter(user=user).count() == 30
    assert not CreditHold.objects.filter(user=user, status=HoldStatus.ACTIVE).exists()
    call_command("credits_verify")
