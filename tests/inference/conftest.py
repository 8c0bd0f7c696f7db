import contextlib
import datetime as dt
import json
import time
from http.server import BaseHTTPRequestHandler

import pytest
from django.utils import timezone

from inference.models import AiModel, ModelPrice
from tests.loopback import loopback_http
from tests.seeds import seed_demo_models, seed_upstreams_and_embeddings

# --- a real OpenAI-compatible upstream on loopback ---------------------------------------

class _UpstreamHandler(BaseHTTPRequestHandler):
    """Behaves as server.mode says: ok | no_usage | http_500 | die_after_two | slow | error_event."""

    def log_message(self, *args):
        pass

    def _sse(self, payload) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def do_POST(self):
        # The client may go away (timeouts, disconnect tests).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer()

    def _answer(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body,
                                     "authorization": self.headers.get("Authorization")})
        mode = self.server.mode
        if mode == "slow":
            time.sleep(1.5)
        if mode == "http_500":
            payload = json.dumps({"error": {"message": "model crashed"}}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        chat = self.path.endswith("/chat/completions")
        pieces = ["Hello", " from", " upstream", "!"]
        if not body.get("stream"):
            self._answer_whole(chat, pieces, mode)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for index, piece in enumerate(pieces):
            if mode == "die_after_two" and index == 2:
                return  # connection closes: no finish, no [DONE]
            if mode == "error_event" and index == 2:
                self._sse({"error": {"message": "GPU fell over"}})
                return
            choice = {"index": 0, "delta": {"content": piece}} if chat else {
                "index": 0, "text": piece}
            self._sse({"id": "up-1", "choices": [choice]})
        final = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {
            "index": 0, "text": "", "finish_reason": "stop"}
        self._sse({"id": "up-1", "choices": [final]})
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if mode != "no_usage" and wants_usage:
            self._sse({"id": "up-1", "choices": [],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}})
        self._sse("[DONE]")


    def _answer_whole(self, chat: bool, pieces: list[str], mode: str) -> None:
        """A non-streamed request: one JSON answer (die_after_two: the connection drops)."""
        if mode in ("die_after_two", "error_event"):
            return
        text = "".join(pieces)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": None, "finish_reason": "stop"} if chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"})
        answer = {"id": "up-1", "object": "chat.completion" if chat else "text_completion",
                  "created": 1, "model": "tiny", "choices": [choice]}
        if mode != "no_usage":
            answer["usage"] = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="session")
def upstream_server():
    with loopback_http(_UpstreamHandler, mode="ok", requests=[]) as server:
        yield server


@pytest.fixture
def upstream(upstream_server, settings, db):
    """An `upstream-tiny` model served by the loopback server; set upstream.mode per test."""
    upstream_server.mode = "ok"
    upstream_server.requests.clear()
    settings.INFERENCE_BACKENDS = {
        **settings.INFERENCE_BACKENDS,
        "loopback": {
            "ENGINE": "openai_compatible",
            "BASE_URL": f"http://127.0.0.1:{upstream_server.server_port}/v1",
            "API_KEY": "upstream-secret",
            "TIMEOUT_SECONDS": 0.5,
        },
    }
    model = AiModel.objects.create(id="upstream-tiny", backend="loopback", upstream_model="tiny",
                                   max_output_tokens=100, context_length=1000)
    ModelPrice.objects.create(model=model, input_price_per_million_micros=1_000_000,
                              output_price_per_million_micros=2_000_000,
                              effective_from=timezone.now() - dt.timedelta(days=1))
    return upstream_server


@pytest.fixture
def spender(make_user):
    """A user past the promotion (so nothing rides on it)."""
    return make_user(first_token_at=timezone.now(), promotion_eligible=False)


@pytest.fixture
def demo_models(transactional_db):
    seed_demo_models()
    seed_upstreams_and_embeddings()


@pytest.fixture
def sdk(live_server, demo_models):
    """openai.OpenAI(base_url=<live server>/v1, api_key=...) for a given secret."""
    import openai

    def make(secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=secret, max_retries=0)

    return make
