"""Schema migrations of the inference app keep the rows they find."""

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("inference", "0002_seed_demo_models")]
AFTER = [("inference", "0003_idempotentrequest_response_as_text")]


@pytest.fixture
def back_to_latest():
    """The tests after this one need every migration applied again."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_stored_replays_survive_the_move_of_responses_to_text(user, back_to_latest):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("inference", "IdempotentRequest")
    answer = {"id": "chatcmpl-1", "choices": [{"message": {"content": "naïve café ☕"}}],
              "usage": {"total_tokens": 7}}
    old.objects.create(user_id=user.pk, key="k", endpoint="chat.completions", body_hash="h",
                       status_code=200, response_body=answer, response_headers={"X-Request-Id": "1"})
    old.objects.create(user_id=user.pk, key="running", endpoint="chat.completions",
                       body_hash="h")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("inference", "IdempotentRequest")
    stored = new.objects.get(key="k")
    assert (stored.status_code, json.loads(stored.response_json)) == (200, answer)
    assert stored.response_headers == {"X-Request-Id": "1"} and stored.request_id == ""
    assert new.objects.get(key="running").response_json is None


@pytest.mark.django_db(transaction=True)
def test_the_settings_upstream_becomes_the_default_upstream_of_its_models(back_to_latest):
    before = [("inference", "0004_usage_status_swept_and_time_limit")]
    after = [("inference", "0006_default_upstream_and_demo_embeddings")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("inference", "AiModel")
    old.objects.create(id="llama", backend="openai_compatible", upstream_model="llama3:8b")
    old.objects.create(id="local-demo", backend="demo")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    state = executor.loader.project_state(after).apps
    upstream = state.get_model("inference", "Upstream").objects.get(name="default")
    assert upstream.from_settings and upstream.api_key == ""
    deployments = state.get_model("inference", "Deployment").objects.all()
    assert [(d.model_id, d.upstream_id, d.upstream_model) for d in deployments] == [
        ("llama", upstream.pk, "llama3:8b")]
    assert state.get_model("inference", "AiModel").objects.get(id="demo-embed").kind == "embedding"
