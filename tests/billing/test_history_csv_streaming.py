"""The ledger's CSV on the live ASGI server (as the Procfile serves it): the whole history,
in order, read a page at a time as it is sent, never gathered whole first."""

import csv
import io
import warnings

import httpx
import pytest
from django.db import connections
from django.urls import reverse

from billing import selectors
from credits import services
from credits.models import LedgerEntry
from tests.books import USD
from tests.sessions import session_cookies

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_long_history_arrives_whole_and_in_order_without_being_gathered_first(
        live_server, member, fund, monkeypatch):
    monkeypatch.setattr(selectors, "HISTORY_CSV_PAGE_ROWS", 3)
    for _ in range(5):
        fund(member, usd=1)
    # One debit across the five grants: one entry per grant, all of the same moment, more of
    # them than a page holds, so a page boundary falls between entries of one moment.
    services.use_credits(user=member, amount_micros=4 * USD + USD // 2, reference="big-call")
    for n in range(4):
        services.use_credits(user=member, amount_micros=1_000, reference=f"call-{n}")
    newest_first = list(LedgerEntry.objects.filter(user=member)
                        .order_by("-created_at", "-id").values_list("pk", "created_at"))
    moments = [moment for _pk, moment in newest_first]
    assert max(moments.count(m) for m in moments) > 3  # the tie really spans a boundary

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = httpx.get(live_server.url + reverse("billing:history_csv"),
                             cookies=session_cookies(member))

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(row["entry_id"]) for row in rows] == [pk for pk, _moment in newest_first]
    assert sum(row["reference"] == "big-call" for row in rows) == 5
    # Under ASGI Django gathers a synchronous body into one list before the first byte (and
    # warns); this body is asynchronous, a page per read.
    assert not [w for w in caught if "StreamingHttpResponse" in str(w.message)]


def test_a_filtered_history_pages_through_only_its_own_entries(live_server, member, fund,
                                                               monkeypatch):
    monkeypatch.setattr(selectors, "HISTORY_CSV_PAGE_ROWS", 2)
    fund(member, usd=10)
    for n in range(5):
        services.use_credits(user=member, amount_micros=1_000 * (n + 1), reference=f"call-{n}")
    fund(member, usd=3)

    response = httpx.get(live_server.url + reverse("billing:history_csv"), params={"type": "USAGE"},
                         cookies=session_cookies(member))

    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["reference"] for row in rows] == [f"call-{n}" for n in reversed(range(5))]
    assert [row["amount_usd"] for row in rows] == [f"-0.00{n}000" for n in (5, 4, 3, 2, 1)]
    assert 'filename="tokenbank-ledger-usage-' in response.headers["content-disposition"]


@pytest.mark.postgres
def test_a_download_holds_one_pooled_connection_only_while_it_reads_a_page(
        live_server, member, fund, monkeypatch):
    """The request's own connection (its session and user) goes back before the first page,
    and each page's reader hands its connection back: between pages a slow download holds
    none, and while reading, one."""
    pool = connections["default"].pool
    assert pool is not None, "the PostgreSQL connection pool is on (DB_POOL_MAX_SIZE)"

    def checked_out() -> int:
        stats = pool.get_stats()
        return stats["pool_size"] - stats["pool_available"]

    monkeypatch.setattr(selectors, "HISTORY_CSV_PAGE_ROWS", 2)
    for _ in range(5):
        fund(member, usd=1)
    read_page, while_reading = selectors.history_entries_page, []

    def counting_page(**kwargs):
        page = read_page(**kwargs)
        while_reading.append(checked_out())  # the reader's connection is still out
        return page

    monkeypatch.setattr(selectors, "history_entries_page", counting_page)
    cookies = session_cookies(member)
    before = checked_out()  # this test's own connection
    with httpx.stream("GET", live_server.url + reverse("billing:history_csv"),
                      cookies=cookies) as response:
        body = b"".join(response.iter_bytes())

    assert body.count(b"\n") == 1 + 5  # the header and five grants
    assert len(while_reading) == 3 and set(while_reading) == {before + 1}


def test_under_wsgi_the_same_pages_come_from_a_plain_generator(client, member, fund,
                                                               monkeypatch):
    monkeypatch.setattr(selectors, "HISTORY_CSV_PAGE_ROWS", 2)
    for _ in range(5):
        fund(member, usd=1)
    client.force_login(member)

    response = client.get(reverse("billing:history_csv"))

    assert not response.is_async
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(row["entry_id"]) for row in rows] == list(
        LedgerEntry.objects.filter(user=member).order_by("-created_at", "-id")
        .values_list("pk", flat=True))
    assert len(rows) == 5
