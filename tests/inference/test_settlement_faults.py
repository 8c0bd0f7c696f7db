"""Accounting that fails after tokens were delivered keeps the charge."""

import logging

import pytest

from credits import services as credit_services
from credits.models import EntryType, LedgerEntry
from inference import services
from inference.backends import Prompt
from inference.models import UsageRecord
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.django_db


def _start(user):
    return services.start_call(user=user, api_key=None, model_id="demo-small",
                               prompt=Prompt(kind="chat", messages=[{"role": "user",
                                                                      "content": "hello"}]),
                               max_tokens=16, endpoint="chat.completions", streamed=True)


def test_a_hold_released_by_the_stale_sweep_mid_stream_is_still_charged(spender, fund, caplog):
    fund(spender, 1)
    call = _start(spender)
    tokens = call.tokens()
    next(tokens)  # the stream is under way
    assert len(credit_services.release_stale_holds(older_than_seconds=0).settled) == 1
    caplog.set_level(logging.ERROR, logger="inference.services")
    text = "".join(tokens)

    record = UsageRecord.objects.get(request_id=call.request_id)
    assert text and record.cost_micros > 0
    spender.refresh_from_db()
    assert spender.credit_balance == USD - record.cost_micros
    assert LedgerEntry.objects.filter(user=spender, entry_type=EntryType.USAGE,
                                      reference=call.request_id).exists()
    assert "settling hold" in caplog.text  # logged loudly
    assert_books_balance(spender.pk)


def test_a_lost_hold_charges_no_more_than_the_balance_and_says_so(spender, fund, caplog):
    grant = fund(spender, 1)
    call = _start(spender)
    tokens = call.tokens()
    next(tokens)
    credit_services.release(hold=call.hold)
    credit_services.void_grant(grant=grant, reason="chargeback while streaming")
    caplog.set_level(logging.ERROR, logger="inference.services")
    "".join(tokens)

    record = UsageRecord.objects.get(request_id=call.request_id)
    assert record.cost_micros == 0
    assert "could not be charged" in caplog.text or "was charged 0 of" in caplog.text
    spender.refresh_from_db()
    assert spender.credit_balance == 0
    assert_books_balance(spender.pk)
