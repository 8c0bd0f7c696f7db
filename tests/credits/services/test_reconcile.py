"""credits_verify: the cached totals against the ledger (credits.services.reconcile), then the
other books (settings.LEDGER_RECONCILERS): calls against usage records, purchases against grants."""

import uuid

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import Provider, Purchase, PurchaseStatus
from credits import services
from credits.models import CreditAccount, GrantKind
from inference.models import AiModel, UsageRecord, UsageStatus
from tests.books import USD

pytestmark = [pytest.mark.django_db]


def test_credits_verify_reports_a_tampered_balance(user, fund, capsys):
    fund(user, 3)
    call_command("credits_verify")
    assert "verified" in capsys.readouterr().out
    CreditAccount.objects.filter(user=user).update(balance_micros=2 * USD)
    with pytest.raises(Exception, match="mismatch"):
        call_command("credits_verify")
    assert "balance vs sum of entries" in capsys.readouterr().err


# --- the other books (settings.LEDGER_RECONCILERS) ---------------------------------


def charged_call(user, *, cost: int, recorded_cost: int | None = None, record: bool = True) -> str:
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    hold = services.authorize(user=user, amount_micros=cost, reference=request_id)
    services.capture(hold=hold, amount_micros=cost)
    if record:
        model, _ = AiModel.objects.get_or_create(id="reconcile-test")
        UsageRecord.objects.create(
            request_id=request_id, user=user, model=model, endpoint="chat.completions",
            input_price_per_million_micros=1, output_price_per_million_micros=1,
            cost_micros=cost if recorded_cost is None else recorded_cost,
            status=UsageStatus.SUCCEEDED, started_at=timezone.now(), hold_id=hold.pk)
    return request_id


def verify(capsys) -> str:
    with pytest.raises(CommandError, match="mismatch"):
        call_command("credits_verify")
    return capsys.readouterr().err


def test_calls_charged_as_recorded_verify_clean(user, fund, capsys):
    fund(user, 5)
    charged_call(user, cost=1234)
    call_command("credits_verify")
    assert "every call its usage record" in capsys.readouterr().out


def test_a_call_charged_other_than_its_usage_record_says_is_reported(user, fund, capsys):
    fund(user, 5)
    request_id = charged_call(user, cost=1234, recorded_cost=1000)
    err = verify(capsys)
    assert request_id in err and "usage record says 1000 micros, the ledger charged 1234" in err


def test_a_charged_api_call_without_a_usage_record_is_reported(user, fund, capsys):
    fund(user, 5)
    request_id = charged_call(user, cost=777, record=False)
    assert f"call {request_id} was charged 777 micros but has no usage record" in verify(capsys)


def test_a_purchase_credited_with_the_wrong_amount_is_reported(user, fund, capsys):
    grant = services.add_credit(user=user, amount_micros=9 * USD, kind=GrantKind.PURCHASED,
                                source_reference="purchase:x")
    purchase = Purchase.objects.create(
        user=user, user_email=user.email, provider=Provider.TEST, amount_micros=10 * USD,
        status=PurchaseStatus.FULFILLED, idempotency_key="p1", grant=grant)
    assert f"purchase {purchase.pk} of {10 * USD} micros is credited by grant #{grant.pk}" in verify(capsys)


def test_a_grant_naming_a_purchase_that_does_not_credit_it_is_reported(user, capsys):
    grant = services.add_credit(user=user, amount_micros=USD, kind=GrantKind.PURCHASED,
                                source_reference="purchase:ghost")
    assert f"grant #{grant.pk} of {USD} micros says it credits purchase:ghost" in verify(capsys)
