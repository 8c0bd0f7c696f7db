"""Prometheus /metrics (config.observability): who may read it, what it counts, and the
counters of several worker processes summed (multiprocess mode, a real gunicorn)."""

import concurrent.futures
import glob
import json
import os
import re
import signal
import time

import httpx
import pytest
from django.db.models import Sum
from prometheus_client.mmap_dict import MmapedDict

from accounts.models import User
from accounts.services import create_api_key
from inference.models import UsageRecord
from tests.books import USD, assert_books_balance
from tests.config.scrape import samples as _samples
from tests.config.scrape import value as _value
from tests.config.servers import start_site, stop
from tests.seeds import seed_demo_models

# --- access -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_answer_the_allowed_addresses_only(client, settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert refused.status_code == 403
    # A forwarded address proves nothing: the scraper's own address counts.
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9",
                      HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.20.30.40").status_code == 200


@pytest.mark.django_db
def test_metrics_answer_the_bearer_token_from_anywhere(client, settings):
    settings.METRICS_ALLOWED_IPS = []
    settings.METRICS_BEARER_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret",
                    REMOTE_ADDR="198.51.100.7")
    assert ok.status_code == 200
    assert ok["Content-Type"].startswith("text/plain")


# --- what is counted (one process) -------------------------------------------------------------


@pytest.mark.django_db
def test_a_402_and_a_rate_limit_refusal_are_counted_without_a_key_or_user_label(
        client, api, user, settings):
    seed_demo_models()
    User.objects.filter(pk=user.pk).update(promotion_eligible=False)  # no sign-up credit either
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 2
    before = _samples(client.get("/metrics").content.decode())
    body = {"model": "demo-small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    statuses = [api.post("/v1/chat/completions", body, format="json").status_code
                for _ in range(3)]
    assert statuses == [402, 402, 429]  # no credit, then over the limit
    after = _samples(client.get("/metrics").content.decode())
    assert _value(after, "tokenbank_payment_required_total", endpoint="v1/chat/completions") \
        - _value(before, "tokenbank_payment_required_total", endpoint="v1/chat/completions") == 2
    assert _value(after, "tokenbank_rate_limited_total", scope="key") \
        - _value(before, "tokenbank_rate_limited_total", scope="key") == 1
    assert _value(after, "tokenbank_requests_total", endpoint="v1/chat/completions",
                  status="429") - _value(before, "tokenbank_requests_total",
                                         endpoint="v1/chat/completions", status="429") == 1
    text = client.get("/metrics").content.decode()
    assert user.email not in text and str(api) not in text
    assert f'user="{user.pk}"' not in text and "key_id" not in text


# --- several workers add up --------------------------------------------------------------------


def _per_process(directory: str, metric: str) -> dict[int, float]:
    """What each process wrote for `metric` (all label sets summed), by pid."""
    out: dict[int, float] = {}
    for path in glob.glob(os.path.join(directory, "counter_*.db")):
        pid = int(re.search(r"_(\d+)\.db$", path).group(1))
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(path):
            if json.loads(key)[0] == metric:
                out[pid] = out.get(pid, 0) + value
    return out


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_metrics_sum_the_metered_calls_of_two_gunicorn_workers(make_user, fund, tmp_path):
    seed_demo_models()
    users = [make_user(promotion_eligible=False) for _ in range(4)]
    secrets = []
    for u in users:
        fund(u, 5)
        secrets.append(create_api_key(user=u, name="metrics")[1])
    directory = str(tmp_path / "prometheus")
    server, url = start_site(workers=2, env={
        "PROMETHEUS_MULTIPROC_DIR": directory, "DEMO_BACKEND_TOKEN_DELAY_MS": "20",
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "0", "RATE_LIMIT_TOKENS_PER_MINUTE": "0"})

    def call(i: int) -> int:
        stream = i % 2 == 0
        with httpx.Client(base_url=url, timeout=30) as http:  # a connection of its own
            response = http.post("/v1/chat/completions",
                                 headers={"Authorization": f"Bearer {secrets[i % 4]}"},
                                 json={"model": "demo-small", "max_tokens": 8, "stream": stream,
                                       "messages": [{"role": "user", "content": f"call {i}"}]})
            response.read()
            return response.status_code

    calls = 0
    try:
        # Rounds of concurrent calls until both workers have served some (the kernel hands
        # each new connection to whichever worker accepts first).
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                assert list(pool.map(call, range(calls, calls + 8))) == [200] * 8
                calls += 8
                if len(_per_process(directory, "tokenbank_calls")) >= 2:
                    break
        by_worker = _per_process(directory, "tokenbank_calls")
        assert len(by_worker) == 2 and all(by_worker.values()), by_worker

        scraped = _samples(httpx.get(f"{url}/metrics").text)
        records = UsageRecord.objects.filter(status="SUCCEEDED")
        assert records.count() == calls
        totals = records.aggregate(prompt=Sum("prompt_tokens"),
                                   completion=Sum("completion_tokens"), cost=Sum("cost_micros"))
        # Counters: the two workers' files, summed.
        assert _value(scraped, "tokenbank_calls_total", model="demo-small",
                      status="SUCCEEDED") == calls == sum(by_worker.values())
        assert _value(scraped, "tokenbank_requests_total", endpoint="v1/chat/completions",
                      model="demo-small", status="200") == calls
        assert _value(scraped, "tokenbank_tokens_total", model="demo-small",
                      **{"class": "prompt"}) == totals["prompt"]
        assert _value(scraped, "tokenbank_tokens_total", model="demo-small",
                      **{"class": "completion"}) == totals["completion"]
        assert _value(scraped, "tokenbank_charged_micros_total", model="demo-small") \
            == totals["cost"] > 0
        # Histograms too: every call's duration and first token, from both workers.
        assert _value(scraped, "tokenbank_call_duration_seconds_count", model="demo-small") == calls
        assert _value(scraped, "tokenbank_time_to_first_token_seconds_count",
                      model="demo-small") == calls
        assert _value(scraped, "tokenbank_time_to_first_token_seconds_bucket",
                      model="demo-small", le="+Inf") == calls
        assert _value(scraped, "tokenbank_holds_active") == 0  # read from the books
        assert _value(scraped, "tokenbank_requests_in_flight") == 0

        # A worker that dies: gunicorn marks it dead (its live gauge file goes), its
        # counters stay summed, and a new worker takes its place.
        victim = max(by_worker)
        assert os.path.exists(os.path.join(directory, f"gauge_livesum_{victim}.db"))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while os.path.exists(os.path.join(directory, f"gauge_livesum_{victim}.db")):
            assert time.monotonic() < deadline, "the dead worker was not marked dead"
            time.sleep(0.1)
        for _ in range(50):
            try:
                scraped = _samples(httpx.get(f"{url}/metrics", timeout=5).text)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert _value(scraped, "tokenbank_calls_total", model="demo-small",
                      status="SUCCEEDED") == calls
        print(f"{calls} calls over 2 workers {dict(by_worker)}; /metrics summed them, and "
              f"kept them after worker {victim} was killed")
    finally:
        stop(server)
    assert_books_balance(*[u.pk for u in users])
    assert sum(User.objects.get(pk=u.pk).credit_balance for u in users) < 4 * 5 * USD
