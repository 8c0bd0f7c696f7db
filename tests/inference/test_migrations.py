"""Schema migrations of the inference app keep the rows they find."""

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("inference", "0002_seed_demo_models")]
AFTER = [("inference", "0003_idempotentrequest_response_as_text")]


@pytest.mark.django_db(transaction=True)
def test_stored_replays_survive_the_move_of_responses_to_text(user):
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
