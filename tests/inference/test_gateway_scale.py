"""The async gateway holds many streams at once on a bounded number of database
connections, and charges each exactly once (live ASGI server, PostgreSQL)."""

import asyncio
import json
import threading
import time

import httpx
import pytest
from django.db import connection

from accounts.services import create_api_key
from credits.models import CreditHold, HoldStatus
from credits.money import usd_to_micros
from credits.services import verify_balances
from inference.models import UsageRecord, UsageStatus
from tests.seeds import seed_demo_models

pytestmark = [pytest.mark.postgres]

STREAMS = 200


class PeakConnections:
    """The test database's connections, polled from another connection; keeps the peak."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        import psycopg

        settings = connection.settings_dict
        self.conn = psycopg.connect(host=settings["HOST"], port=settings["PORT"],
                                    user=settings["USER"], dbname=settings["NAME"], autocommit=True)
        self.thread = threading.Thread(target=self._poll)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.conn.close()

    def _poll(self):
        while not self._stop.is_set():
            (count,) = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchone()
            self.peak = max(self.peak, count)
            time.sleep(0.02)


async def stream_all(base_url: str, secrets: list[str]) -> list[tuple[int, str, str | None]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120,
                                 limits=httpx.Limits(max_connections=STREAMS + 10)) as client:

        async def one(i: int):
            body = {"model": "demo-small", "stream": True, "max_tokens": 24,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": f"stream number {i}"}]}
            async with client.stream("POST", "/v1/chat/completions", json=body, headers={
                    "Authorization": f"Bearer {secrets[i % len(secrets)]}"}) as response:
                charged = None
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        data = json.loads(line[6:])
                        charged = data.get("credits", {}).get("charged", charged)
                return response.status_code, response.headers.get("X-Request-Id"), charged

        return await asyncio.gather(*(one(i) for i in range(STREAMS)))


def test_two_hundred_concurrent_streams_finish_each_charged_once_on_a_bounded_pool(
        live_server, make_user, fund, settings):
    seed_demo_models()
    settings.DEMO_BACKEND_TOKEN_DELAY_MS = 25  # each stream lasts about 0.6 s: all overlap
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = settings.RATE_LIMIT_TOKENS_PER_MINUTE = 0
    users = [make_user(promotion_eligible=False) for _ in range(20)]
    secrets = []
    for user in users:
        fund(user, 5)
        secrets.append(create_api_key(user=user, name="scale")[1])

    with PeakConnections() as watch:
        results = asyncio.run(stream_all(live_server.url, secrets))

    assert [status for status, _, _ in results] == [200] * STREAMS
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert len(records) == STREAMS  # one usage record per stream, none twice
    for _status, request_id, charged in results:
        record = records[request_id]
        assert record.status == UsageStatus.SUCCEEDED
        assert usd_to_micros(charged) == record.cost_micros > 0  # what the stream was told
    assert not CreditHold.objects.filter(status=HoldStatus.ACTIVE).exists()
    assert verify_balances() == []
    # Every connection of the process comes from its pool (the ledger's steps borrow one
    # each, for one step): the count is bounded by the pool, never one per stream.
    assert watch.peak <= settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"], watch.peak
    assert watch.peak < STREAMS / 4, watch.peak
