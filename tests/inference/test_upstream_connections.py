"""The gateway's async reads of an upstream (aiohttp, inference.backends): errors as clear as
the sync reads', connections kept for the server's loop and closed when it stops, none left
behind by a loop that is not kept, and a client's hang-up passed on to the upstream."""

import asyncio
import contextlib
import datetime as dt
import gc
import json
import socket
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from django.utils import timezone

from inference import backends
from inference.backends import Prompt, get_backend, upstream_sessions
from inference.exceptions import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from inference.models import AiModel, ModelPrice, UsageRecord, UsageStatus
from tests.loopback import loopback_http
from tests.waiting import wait_for


class _KeepAliveHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 upstream that keeps its connections open between requests and streams
    `server.tokens` tokens `server.delay` seconds apart, chunked, as vLLM does."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.opened += 1
            self.server.open += 1

    def finish(self):
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.lock:
            self.server.open -= 1

    def _chunk(self, payload) -> None:
        data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data.encode()))
        self.wfile.flush()

    def do_POST(self):
        json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for index in range(self.server.tokens):
                self._chunk({"id": "up", "choices": [{"index": 0, "delta": {"content": "tok "}}]})
                self.server.sent[-1] = index + 1
                time.sleep(self.server.delay)
            self._chunk({"id": "up", "choices": [{"index": 0, "delta": {},
                                                  "finish_reason": "stop"}]})
            self._chunk({"id": "up", "choices": [], "usage": {
                "prompt_tokens": 3, "completion_tokens": self.server.tokens}})
            self._chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.hung_up.set()
            self.close_connection = True

    def handle_one_request(self):
        self.server.sent.append(0)
        super().handle_one_request()


@pytest.fixture
def keepalive_upstream():
    with loopback_http(_KeepAliveHandler, lock=threading.Lock(), opened=0, open=0, tokens=4,
                       delay=0, sent=[], hung_up=threading.Event()) as server:
        yield server


def _backend_for(settings, port: int, name: str = "keepalive", **timeouts):
    settings.INFERENCE_BACKENDS = {**settings.INFERENCE_BACKENDS, name: {
        "ENGINE": "openai_compatible", "BASE_URL": f"http://127.0.0.1:{port}/v1",
        "TIMEOUT_SECONDS": 0.5, **timeouts}}
    return get_backend(name)


def _stream(backend, max_tokens: int = 8):
    return backend.agenerate(model_name="tiny", max_tokens=max_tokens,
                             prompt=Prompt(kind="chat", messages=[{"role": "user", "content": "hi"}]))


async def _read(stream) -> str:
    return "".join([piece async for piece in stream])


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("http_500", UpstreamUnavailable, "answered 500: model crashed"),
        ("die_after_two", UpstreamError, "closed the stream early"),
        ("error_event", UpstreamError, "GPU fell over"),
        ("slow", UpstreamTimeout, "timed out"),
    ],
)
def test_async_reads_map_upstream_failures_to_the_same_clear_errors(upstream, mode, error,
                                                                     message):
    upstream.mode = mode
    stream = _stream(get_backend("loopback"))
    with pytest.raises(error, match=message):
        asyncio.run(_read(stream))


def test_an_unreachable_upstream_is_unavailable_on_the_async_path_too(settings):
    stream = _stream(_backend_for(settings, 9, name="nowhere"))
    with pytest.raises(UpstreamUnavailable, match="Could not reach"):
        asyncio.run(_read(stream))


@pytest.fixture
def unanswering_upstream():
    """A port whose listen queue is full: the kernel drops new SYNs, so a connect hangs
    (an upstream host that is down behind a firewall, or overloaded)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))  # fills the queue
    yield port
    queued.close()
    listener.close()


def test_an_upstream_that_never_accepts_is_unavailable_after_the_connect_timeout(
        settings, unanswering_upstream):
    """Not after the read timeout: a dead host is given up on (and failed over) quickly."""
    backend = _backend_for(settings, unanswering_upstream, name="blackhole",
                           TIMEOUT_SECONDS=30, CONNECT_TIMEOUT_SECONDS=0.2)
    with pytest.raises(UpstreamUnavailable, match="Could not reach"):
        asyncio.run(asyncio.wait_for(_read(_stream(backend)), timeout=3))


def test_a_stream_waiting_for_a_free_pooled_connection_waits_it_is_not_failed_over(
        settings, keepalive_upstream, monkeypatch):
    """Every connection to the upstream busy: the next stream waits for one to come back
    (within the upstream's whole timeout), where a connect timeout would have reported a
    healthy upstream as unreachable."""
    monkeypatch.setattr(backends, "UPSTREAM_CONNECTIONS_PER_HOST", 1)
    keepalive_upstream.tokens, keepalive_upstream.delay = 10, 0.05  # 0.5 s per stream
    backend = _backend_for(settings, keepalive_upstream.server_port,
                           TIMEOUT_SECONDS=5, CONNECT_TIMEOUT_SECONDS=0.1)

    async def two_at_once():
        upstream_sessions.keep_for_this_loop()
        try:
            return await asyncio.gather(_read(_stream(backend, max_tokens=10)),
                                        _read(_stream(backend, max_tokens=10)))
        finally:
            await upstream_sessions.close_this_loop()

    assert asyncio.run(two_at_once()) == ["tok " * 10] * 2
    assert keepalive_upstream.opened == 1  # the second waited for the first's connection


def test_a_loop_the_server_did_not_keep_leaves_no_session_or_connection_open(
        settings, keepalive_upstream):
    """An async view run by the WSGI test client gets a loop of its own: each stream opens
    and closes its own session, so nothing is left unclosed when that loop goes."""
    backend = _backend_for(settings, keepalive_upstream.server_port)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert asyncio.run(_read(_stream(backend))) == "tok " * 4
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert wait_for(lambda: keepalive_upstream.open == 0)
    assert keepalive_upstream.opened == 3


def test_the_server_loop_reuses_one_upstream_connection_and_closes_it_when_it_stops(
        settings, keepalive_upstream):
    backend = _backend_for(settings, keepalive_upstream.server_port)

    async def serve():
        upstream_sessions.keep_for_this_loop()  # what config.asgi's lifespan startup does
        try:
            return [await _read(_stream(backend)) for _ in range(5)], keepalive_upstream.open
        finally:
            await upstream_sessions.close_this_loop()  # lifespan shutdown

    answers, open_while_serving = asyncio.run(serve())
    assert answers == ["tok " * 4] * 5
    assert (keepalive_upstream.opened, open_while_serving) == (1, 1)
    assert wait_for(lambda: keepalive_upstream.open == 0)


def test_a_stream_abandoned_early_closes_its_upstream_connection_on_the_server_loop(
        settings, keepalive_upstream):
    """The kept connection of a stream the client left is closed, not returned to the pool
    half-read: the upstream notices and stops generating."""
    keepalive_upstream.tokens, keepalive_upstream.delay = 200, 0.02
    backend = _backend_for(settings, keepalive_upstream.server_port)

    async def abandon():
        upstream_sessions.keep_for_this_loop()
        try:
            stream = _stream(backend, max_tokens=200)
            pieces = aiter(stream)
            await anext(pieces)
            await pieces.aclose()
        finally:
            await upstream_sessions.close_this_loop()

    asyncio.run(abandon())
    assert keepalive_upstream.hung_up.wait(5)
    assert keepalive_upstream.sent[-1] < 20


@pytest.mark.django_db(transaction=True)
def test_a_client_hanging_up_on_an_upstream_stream_stops_the_upstream_and_pays_what_it_got(
        settings, keepalive_upstream, live_server, make_user, fund):
    """The whole way, as served: the client leaves after three tokens; the gateway closes its
    upstream connection within a token or so and charges the tokens it passed on."""
    from accounts.services import create_api_key

    keepalive_upstream.tokens, keepalive_upstream.delay = 200, 0.04
    _backend_for(settings, keepalive_upstream.server_port)
    model = AiModel.objects.create(id="keepalive-tiny", backend="keepalive",
                                   upstream_model="tiny", max_output_tokens=500,
                                   context_length=1000)
    ModelPrice.objects.create(model=model, input_price_per_million_micros=1_000_000,
                              output_price_per_million_micros=2_000_000,
                              effective_from=timezone.now() - dt.timedelta(days=1))
    spender = make_user(promotion_eligible=False)
    fund(spender, 1)
    secret = create_api_key(user=spender, name="k")[1]
    with httpx.Client(base_url=live_server.url, timeout=30) as client, client.stream(
            "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
            json={"model": "keepalive-tiny", "stream": True, "max_tokens": 200,
                  "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status_code == 200
        request_id = response.headers["X-Request-Id"]
        tokens = 0
        for line in response.iter_lines():
            tokens += '"content":"tok "' in line
            if tokens == 3:
                break
    assert keepalive_upstream.hung_up.wait(5)
    assert keepalive_upstream.sent[-1] <= 8
    assert wait_for(lambda: UsageRecord.objects.filter(request_id=request_id).exists())
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.status == UsageStatus.CLIENT_DISCONNECTED
    assert 3 <= record.completion_tokens <= 5
    spender.refresh_from_db()
    assert (spender.credit_balance, spender.credit_held) == (
        1_000_000 - record.cost_micros, 0)
