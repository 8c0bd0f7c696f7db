"""A call's charge and its usage record commit together (one commit per call, not two), and a
record that fails in that transaction never costs the call its charge."""

import pytest
from django.db import connection

from accounts.services import create_api_key
from credits.models import CreditHold, HoldStatus
from credits.money import usd_to_micros
from inference.models import UsageRecord, UsageStatus
from tests.books import assert_books_balance
from tests.seeds import seed_demo_models

pytestmark = pytest.mark.django_db(transaction=True)

CALL = {"model": "demo-small", "max_tokens": 12,
        "messages": [{"role": "user", "content": "Hello there, world!"}]}


@pytest.fixture
def paying(make_user, fund, client_for, settings):
    seed_demo_models()
    settings.DEMO_BACKEND_TOKEN_DELAY_MS = 0
    user = make_user(promotion_eligible=False)
    fund(user, 1)
    return user, client_for(create_api_key(user=user, name="k")[1])


def _xmin(sql: str, value) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, [value])
        return int(cursor.fetchone()[0])


@pytest.mark.postgres
@pytest.mark.parametrize("stream", [False, True])
def test_the_charge_and_the_usage_record_commit_in_one_transaction(paying, stream):
    user, client = paying
    response = client.post("/v1/chat/completions", {**CALL, "stream": stream}, format="json")
    assert response.status_code == 200
    b"".join(response.streaming_content) if stream else None

    record = UsageRecord.objects.get(user=user)
    hold = CreditHold.objects.get(pk=record.hold_id)
    assert hold.status == HoldStatus.CAPTURED and hold.captured_micros == record.cost_micros > 0
    # PostgreSQL's xmin: the transaction that wrote each row's current version.
    assert (_xmin("SELECT xmin::text FROM credits_credithold WHERE id = %s", hold.pk)
            == _xmin("SELECT xmin::text FROM inference_usagerecord WHERE request_id = %s",
                     record.request_id))


@pytest.fixture
def failing_records():
    """`fail(times)`: the database refuses the next `times` usage records (a trigger; a
    sequence counts them, outside any transaction, so a rolled-back failure still counts)."""
    def fail(times: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("CREATE SEQUENCE test_usage_record_failures")
            cursor.execute(f"""
                CREATE FUNCTION test_fail_usage_record() RETURNS trigger AS $$
                BEGIN
                  IF nextval('test_usage_record_failures') <= {times} THEN
                    RAISE EXCEPTION 'the usage table is broken' USING ERRCODE = 'data_exception';
                  END IF;
                  RETURN NEW;
                END $$ LANGUAGE plpgsql""")
            cursor.execute("CREATE TRIGGER test_fail_usage_record BEFORE INSERT ON "
                           "inference_usagerecord FOR EACH ROW "
                           "EXECUTE FUNCTION test_fail_usage_record()")
    yield fail
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS test_fail_usage_record ON inference_usagerecord")
        cursor.execute("DROP FUNCTION IF EXISTS test_fail_usage_record()")
        cursor.execute("DROP SEQUENCE IF EXISTS test_usage_record_failures")


@pytest.mark.postgres
def test_a_record_that_fails_with_the_charge_is_written_after_it_and_the_charge_stands(
        paying, failing_records, caplog):
    user, client = paying
    failing_records(1)
    response = client.post("/v1/chat/completions", CALL, format="json")

    assert response.status_code == 200
    charged = usd_to_micros(response.json()["usage"]["cost"])
    record = UsageRecord.objects.get(user=user)
    assert f"settling call {record.request_id} with its usage record failed" in caplog.text
    assert (record.status, record.cost_micros) == (UsageStatus.SUCCEEDED, charged)
    assert CreditHold.objects.get(pk=record.hold_id).captured_micros == charged > 0
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (1_000_000 - charged, 0)
    assert_books_balance(user.pk)


@pytest.mark.postgres
def test_a_record_that_cannot_be_written_at_all_still_leaves_the_call_charged(
        paying, failing_records, caplog):
    user, client = paying
    failing_records(1_000)
    response = client.post("/v1/chat/completions", CALL, format="json")

    assert response.status_code == 200
    charged = usd_to_micros(response.json()["usage"]["cost"])
    assert charged > 0 and not UsageRecord.objects.exists()
    hold = CreditHold.objects.get(user=user)
    assert (hold.status, hold.captured_micros) == (HoldStatus.CAPTURED, charged)
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (1_000_000 - charged, 0)
    assert "was not written" in caplog.text
    assert_books_balance(user.pk)


def test_a_record_that_cannot_even_be_built_leaves_the_call_charged_and_answered(
        paying, monkeypatch, caplog):
    """Settling never raises into the response: a record whose fields fail to build is
    logged, and the call keeps its charge and its answer."""
    from inference.services import MeteredCall

    def broken(self, status, produced):
        raise ValueError("a field cannot be built")

    user, client = paying
    monkeypatch.setattr(MeteredCall, "_record_fields", broken)
    response = client.post("/v1/chat/completions", CALL, format="json")

    assert response.status_code == 200
    charged = usd_to_micros(response.json()["usage"]["cost"])
    hold = CreditHold.objects.get(user=user)
    assert (hold.status, hold.captured_micros) == (HoldStatus.CAPTURED, charged) and charged > 0
    assert not UsageRecord.objects.exists() and "was not written" in caplog.text
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (1_000_000 - charged, 0)
    assert_books_balance(user.pk)


def test_a_settlement_whose_commit_reply_is_lost_charges_once_and_says_the_record_is_written(
        paying, monkeypatch, caplog):
    """The settlement commits (the charge and the record) but its reply never comes back: the
    retry finds the hold settled. One charge, one record, and no alarm that the record was
    not written."""
    from django.db import OperationalError

    from credits import services as credit_services

    real_capture, replies_lost = credit_services.capture, []

    def commit_then_lose_the_reply(**kwargs):
        settled = real_capture(**kwargs)
        if not replies_lost:
            replies_lost.append(kwargs["hold"].pk)
            raise OperationalError("server closed the connection unexpectedly")
        return settled

    user, client = paying
    monkeypatch.setattr(credit_services, "capture", commit_then_lose_the_reply)
    response = client.post("/v1/chat/completions", CALL, format="json")

    assert response.status_code == 200 and replies_lost
    charged = usd_to_micros(response.json()["usage"]["cost"])
    record = UsageRecord.objects.get(user=user)
    assert (record.status, record.cost_micros) == (UsageStatus.SUCCEEDED, charged) and charged > 0
    assert CreditHold.objects.get(pk=record.hold_id).captured_micros == charged
    user.refresh_from_db()
    assert (user.credit_balance, user.credit_held) == (1_000_000 - charged, 0)
    assert "was not written" not in caplog.text
    assert_books_balance(user.pk)
