"""What a metered call tells the operators (inference.observe): upstream errors by upstream,
tokens and charge by model, in this process's metrics."""

import pytest
from prometheus_client import REGISTRY

from accounts.services import create_api_key
from inference.models import UsageRecord

CHAT = "/v1/chat/completions"


def _count(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.django_db
def test_an_upstream_error_is_counted_by_upstream_and_a_success_by_model(spender, fund, client_for,
                                                                          upstream):
    fund(spender, 1)
    client = client_for(create_api_key(user=spender, name="k")[1])
    errors = _count("tokenbank_upstream_errors_total", upstream="loopback")
    tokens = _count("tokenbank_tokens_total", model="upstream-tiny", **{"class": "completion"})
    charged = _count("tokenbank_charged_micros_total", model="upstream-tiny")
    body = {"model": "upstream-tiny", "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}]}

    upstream.mode = "http_500"
    assert client.post(CHAT, body, format="json").status_code == 502
    assert _count("tokenbank_upstream_errors_total", upstream="loopback") == errors + 1
    assert _count("tokenbank_calls_total", endpoint="chat.completions", model="upstream-tiny",
                  status="UPSTREAM_ERROR") >= 1

    upstream.mode = "ok"
    assert client.post(CHAT, body, format="json").status_code == 200
    record = UsageRecord.objects.get(status="SUCCEEDED")
    assert _count("tokenbank_tokens_total", model="upstream-tiny", **{"class": "completion"}) \
        == tokens + record.completion_tokens
    assert _count("tokenbank_charged_micros_total", model="upstream-tiny") \
        == charged + record.cost_micros
    assert _count("tokenbank_upstream_errors_total", upstream="loopback") == errors + 1
