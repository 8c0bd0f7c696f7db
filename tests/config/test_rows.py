"""config.rows reads and writes instances as the ORM does: every field type the metered path
uses (UUID, JSON, datetimes, booleans, nullable integers) comes back equal, on SQLite and
PostgreSQL."""

import datetime as dt
import uuid

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.rows import columns, fetch, insert
from credits.models import CreditHold, HoldStatus
from credits.services import authorize
from inference.models import UsageRecord
from tests.seeds import seed_demo_models

pytestmark = pytest.mark.django_db

FIELDS = [field.attname for field in UsageRecord._meta.concrete_fields if field.attname != "id"]


def record(user, **overrides) -> UsageRecord:
    seed_demo_models()
    values = dict(
        request_id=f"chatcmpl-{uuid.uuid4().hex}", user_id=user.pk, model_id="demo-small",
        endpoint="chat.completions", hold_id=uuid.uuid4(), prompt_tokens=12,
        completion_tokens=30, reasoning_tokens=4, input_price_per_million_micros=150_000,
        output_price_per_million_micros=600_000, cached_input_price_per_million_micros=None,
        cost_micros=19_800, held_micros=40_000, streamed=True, status="SUCCEEDED",
        estimated=True, upstream="primary",
        attempts=[{"upstream": "primary", "outcome": "served", "ms": 12}],
        time_to_first_token_ms=None,
        started_at=timezone.now() - dt.timedelta(seconds=3))
    return UsageRecord(**{**values, **overrides})


def test_an_inserted_usage_record_reads_back_as_the_orm_would_write_it(user):
    written = record(user)
    insert(written)

    stored = UsageRecord.objects.get(request_id=written.request_id)
    assert {name: getattr(stored, name) for name in FIELDS} == {
        name: getattr(written, name) for name in FIELDS}


def test_a_second_record_of_the_same_call_is_refused(user):
    first = record(user)
    insert(first)

    with pytest.raises(IntegrityError), transaction.atomic():
        insert(record(user, request_id=first.request_id))
    assert UsageRecord.objects.filter(request_id=first.request_id).count() == 1


def test_a_fetched_hold_equals_the_orm_s(user, fund):
    fund(user, 5)
    hold = authorize(user=user, amount_micros=1_000_000, reference="call-1",
                     metadata={"model": "demo-small", "streamed": True})

    (fetched,), = fetch(f"SELECT {columns(CreditHold, 'h')} FROM {CreditHold._meta.db_table} h "
                        "WHERE h.user_id = %s", [user.pk], CreditHold)

    loaded = CreditHold.objects.get(pk=hold.pk)
    assert fetched.pk == loaded.pk and fetched.status == HoldStatus.ACTIVE
    assert {f.attname: getattr(fetched, f.attname) for f in CreditHold._meta.concrete_fields} == {
        f.attname: getattr(loaded, f.attname) for f in CreditHold._meta.concrete_fields}


def test_the_key_lookup_returns_the_key_with_its_user(user):
    from accounts.services import create_api_key, get_user_for_api_key

    key, secret = create_api_key(user=user, name="rows")

    found = get_user_for_api_key(secret)

    assert found.pk == key.pk and found.user == user and found.user.email == user.email
    assert found.created_at == key.created_at and found.revoked_at is None


def test_a_model_with_no_price_in_effect_yet_is_found_without_one():
    from inference.models import AiModel, ModelPrice
    from inference.services import resolve_priced_model

    seed_demo_models()
    model = AiModel.objects.get(id="demo-small")
    ModelPrice.objects.create(model=model, input_price_per_million_micros=1,
                              output_price_per_million_micros=1,
                              effective_from=timezone.now() + dt.timedelta(days=1))
    ModelPrice.objects.filter(model=model, effective_from__lte=timezone.now()).delete()

    found, price = resolve_priced_model("demo-small")

    assert found == model and price is None


def _prepared(marker: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                       [f"%{marker}%"])
        return cursor.fetchone()[0]


@pytest.mark.postgres
def test_the_metered_path_s_statements_are_prepared_once_per_connection_and_still_logged(user):
    """Planning was most of PostgreSQL's time for the ledger's short statements: each is
    prepared on its connection the first time and its plan reused after."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User

    sql = f"SELECT {columns(User, 'u')} FROM accounts_user u WHERE u.id = %s /* prepared-1 */"
    with CaptureQueriesContext(connection) as queries:
        first = fetch(sql, [user.pk], User)
        again = fetch(sql, [user.pk], User)

    assert first[0][0] == again[0][0] == user
    assert _prepared("prepared-1") == 1
    # Django's query log still shows each statement with its parameters.
    assert [q["sql"].endswith(f"WHERE u.id = {user.pk} /* prepared-1 */")
            for q in queries.captured_queries] == [True, True]


@pytest.mark.postgres
def test_with_prepared_statements_off_nothing_is_prepared(user):
    """DB_PREPARED_STATEMENTS=false (a PgBouncer before 1.21 in transaction mode, which
    cannot follow named statements): parameters are still bound on the server, unnamed."""
    from django.db import connection

    from accounts.models import User

    connection.ensure_connection()
    threshold = connection.connection.prepare_threshold
    connection.connection.prepare_threshold = None  # what the setting leaves
    try:
        sql = f"SELECT {columns(User, 'u')} FROM accounts_user u WHERE u.id = %s /* unprepared */"
        assert fetch(sql, [user.pk], User)[0][0] == user
        assert fetch(sql, [user.pk], User)[0][0] == user
    finally:
        connection.connection.prepare_threshold = threshold
    assert _prepared("unprepared") == 0


@pytest.fixture
def scratch_table(db):
    """A table whose column type a "migration" (another connection) changes while this
    connection has a statement on it prepared."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE rows_scratch (id int PRIMARY KEY, v int)")
        cursor.execute("INSERT INTO rows_scratch VALUES (1, 5)")
    yield "SELECT v FROM rows_scratch WHERE id = %s"
    if not connection.get_autocommit():
        connection.rollback()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE rows_scratch")


def _migrate_from_another_process(sql: str) -> None:
    import psycopg
    from django.db import connection

    db = connection.settings_dict
    with psycopg.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"],
                         dbname=db["NAME"], autocommit=True) as other:
        other.execute(sql)


def _read(sql):
    from config.rows import cursor

    with cursor() as reading:
        reading.execute(sql, [1])
        return reading.fetchone()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_migration_that_changes_a_column_s_type_does_not_break_the_live_connections(
        scratch_table):
    """PostgreSQL refuses a prepared statement whose result type changed ("cached plan must
    not change result type"); the connection forgets its prepared statements and runs it
    again, rather than failing on every call until it is recycled."""
    assert _read(scratch_table) == (5,)
    _migrate_from_another_process("ALTER TABLE rows_scratch ALTER COLUMN v TYPE bigint")

    assert [_read(scratch_table) for _ in range(3)] == [(5,), (5,), (5,)]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_in_a_transaction_the_stale_statement_fails_that_transaction_only(scratch_table):
    """Inside a transaction the failed statement aborts it (a ledger step fails and rolls
    back as a whole); the rollback forgets the stale statement, so the connection's next
    transaction runs it."""
    from django.db import NotSupportedError, transaction

    assert _read(scratch_table) == (5,)
    _migrate_from_another_process("ALTER TABLE rows_scratch ALTER COLUMN v TYPE bigint")

    with pytest.raises(NotSupportedError, match="cached plan"), transaction.atomic():
        _read(scratch_table)
    with transaction.atomic():
        assert _read(scratch_table) == (5,)
    assert _read(scratch_table) == (5,)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_statement_the_server_no_longer_has_is_prepared_again(scratch_table):
    """A pooler that hands the connection a new backend, or DISCARD ALL from elsewhere: the
    server no longer knows the statement psycopg thinks it prepared."""
    from django.db import connection

    assert _read(scratch_table) == (5,)
    connection.connection.pgconn.exec_(b"DEALLOCATE ALL")  # behind psycopg's back

    assert _read(scratch_table) == (5,)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_refused_hold_keeps_the_connection_s_prepared_statements(user, make_user, fund):
    """A client out of credit is refused on every call; its refusal must not make the pooled
    connection forget the ledger's prepared statements (psycopg forgets them all on a
    ROLLBACK), or everyone's next calls on it plan them again."""
    import psycopg
    from django.db import connection

    from credits.exceptions import InsufficientCredits

    fund(user, 5)
    broke = make_user(promotion_eligible=False)
    authorize(user=user, amount_micros=1_000, reference="paid")
    prepared = _prepared_names()
    assert prepared

    with pytest.raises(InsufficientCredits):
        authorize(user=broke, amount_micros=1_000, reference="refused")

    assert _prepared_names() >= prepared  # none forgotten
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert not CreditHold.objects.filter(reference="refused").exists()
    authorize(user=user, amount_micros=1_000, reference="paid again")
    assert _prepared_names() >= prepared


def _prepared_names() -> set[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {name for (name,) in cursor.fetchall()}
