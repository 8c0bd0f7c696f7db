"""LOG_FORMAT=json (config.observability.logging): one JSON object per line, carrying the
request's id, user, key and model."""

import json
import logging
import subprocess
import sys

import httpx
import pytest

from accounts.services import create_api_key
from config.observability import context
from config.observability.logging import JsonFormatter
from tests.config.servers import start_site, stop
from tests.seeds import seed_demo_models


def _record(message: str, *args, level=logging.ERROR, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("inference.services", level, __file__, 1, message, args, exc_info)


def test_a_billing_error_keeps_its_prefix_and_is_flagged_in_a_field():
    context.begin("chatcmpl-abc")
    context.bind(user_id=7, key_id=3, model="demo-small")
    try:
        raise RuntimeError("connection lost")
    except RuntimeError:
        line = JsonFormatter().format(_record("BILLING: call %s could not be charged", "chatcmpl-abc",
                                              exc_info=sys.exc_info()))
    finally:
        context.end()
    parsed = json.loads(line)
    assert parsed["message"] == "BILLING: call chatcmpl-abc could not be charged"
    assert parsed["alert"] == "BILLING"
    assert (parsed["level"], parsed["logger"]) == ("ERROR", "inference.services")
    assert (parsed["request_id"], parsed["user_id"], parsed["key_id"], parsed["model"]) == (
        "chatcmpl-abc", 7, 3, "demo-small")
    assert "RuntimeError: connection lost" in parsed["exception"]
    assert parsed["time"].endswith("+00:00")


def test_outside_a_request_a_line_has_no_request_fields():
    parsed = json.loads(JsonFormatter().format(_record("sweep done", level=logging.INFO)))
    assert set(parsed) == {"time", "level", "logger", "message"}
    assert "alert" not in parsed


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_json_log_line_of_a_metered_call_carries_its_request_id(make_user, fund, tmp_path):
    seed_demo_models()
    spender = make_user(promotion_eligible=False)
    fund(spender, 1)
    key, secret = create_api_key(user=spender, name="logs")
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server, url = start_site(env={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"},
                                 stdout=sink, stderr=subprocess.STDOUT)
        try:
            response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                                  headers={"Authorization": f"Bearer {secret}"},
                                  json={"model": "demo-small", "max_tokens": 6,
                                        "messages": [{"role": "user", "content": "hello"}]})
            assert response.status_code == 200
        finally:
            stop(server)
    request_id = response.headers["X-Request-Id"]
    assert request_id == response.json()["id"]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    # Every line is one JSON object (json.loads above would have failed otherwise).
    settled = [line for line in lines if line.get("request_id") == request_id
               and line["logger"] == "inference.calls"]
    assert len(settled) == 1, lines
    line = settled[0]
    assert line["message"].startswith(f"call {request_id} settled: SUCCEEDED")
    assert (line["user_id"], line["key_id"], line["model"], line["level"]) == (
        spender.pk, key.pk, "demo-small", "INFO")
    assert {"time", "level", "logger", "message"} <= set(line)


def test_the_first_task_a_web_process_enqueues_leaves_the_logging_set_up_alone(monkeypatch):
    """A web process imports a task's module when it first enqueues it (after a paid call's
    commit, say): that must not configure Django, and so the logging, a second time, which
    would drop every handler added since start-up (a log shipper's, a test's capture)."""
    from config import queue
    from config.celery import app as celery_app

    name = "credits.tasks.evaluate_promotions"
    # As if this process had never imported credits.tasks (the registry is finalized).
    for registered in [n for n in celery_app.tasks if n.startswith("credits.tasks.")]:
        monkeypatch.delitem(celery_app.tasks, registered)
    monkeypatch.delitem(sys.modules, "credits.tasks", raising=False)
    shipper = logging.NullHandler()
    logging.getLogger().addHandler(shipper)
    try:
        task = queue._task(name)
        assert task.name == name
        assert shipper in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(shipper)
