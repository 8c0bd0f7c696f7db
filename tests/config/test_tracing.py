"""OpenTelemetry (config.observability.tracing): spans over OTLP when
OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing imported when it is not."""

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from accounts.services import create_api_key
from tests.config.servers import ROOT, start_site, stop
from tests.seeds import seed_demo_models


class Collector:
    """An OTLP/HTTP trace receiver on a free port: keeps every span it is sent."""

    def __init__(self):
        spans = self.spans = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            spans.append((service.get("service.name"), span))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def _attributes(span) -> dict:
    out = {}
    for a in span.attributes:
        value = a.value
        out[a.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_with_an_otlp_endpoint_a_metered_call_is_traced_with_its_request_id_tokens_and_charge(
        make_user, fund):
    seed_demo_models()
    spender = make_user(promotion_eligible=False)
    fund(spender, 1)
    _key, secret = create_api_key(user=spender, name="traces")
    collector = Collector()
    server, url = start_site(env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                                  "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                              headers={"Authorization": f"Bearer {secret}"},
                              json={"model": "demo-small", "max_tokens": 6,
                                    "messages": [{"role": "user", "content": "trace me"}]})
        assert response.status_code == 200
        request_id = response.headers["X-Request-Id"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                span.name == "tokenbank.metered_call" for _s, span in collector.spans):
            time.sleep(0.1)
    finally:
        stop(server)
        collector.close()
    calls = [span for _s, span in collector.spans if span.name == "tokenbank.metered_call"]
    assert len(calls) == 1
    attributes = _attributes(calls[0])
    usage = response.json()["usage"]
    assert attributes["tokenbank.request_id"] == request_id
    assert attributes["tokenbank.model"] == "demo-small"
    assert attributes["tokenbank.prompt_tokens"] == usage["prompt_tokens"]
    assert attributes["tokenbank.completion_tokens"] == usage["completion_tokens"]
    assert attributes["tokenbank.charged_micros"] == round(float(usage["cost"]) * 1_000_000) > 0
    # The request's server span (Django) and its database queries (psycopg), one trace.
    server_spans = [s for _s, s in collector.spans if s.kind == s.SPAN_KIND_SERVER]
    assert server_spans, [(s.name, s.kind, s.trace_id == calls[0].trace_id) for _x, s in collector.spans]
    assert server_spans and {s.trace_id for s in server_spans} >= {calls[0].trace_id}
    request_span = next(s for s in server_spans if s.trace_id == calls[0].trace_id)
    assert _attributes(request_span)["tokenbank.request_id"] == request_id
    queries = [s for _s, s in collector.spans
               if s.trace_id == calls[0].trace_id and s.kind == s.SPAN_KIND_CLIENT]
    assert queries, [(s.name, s.kind, s.trace_id == calls[0].trace_id) for _x, s in collector.spans]
    assert {service for service, _span in collector.spans} == {"tokenbank-web"}


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported():
    script = (
        "import os, sys\n"
        "os.environ.pop('OTEL_EXPORTER_OTLP_ENDPOINT', None)\n"
        "from config.asgi import application\n"
        "from django.test import Client\n"
        "assert Client().get('/healthz').status_code == 200\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
