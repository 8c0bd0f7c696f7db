"""A fake OpenAI-compatible upstream on loopback that answers as OpenAI does: tool calls
(whole and as streamed deltas), JSON mode, logprobs, n choices, refusals and usage with cached
and reasoning tokens. `answer_for(body)` is what it sends, so a test can compare what the
client got with what the upstream said.

Behaviours (`server.behaviour`): ok | refuse_503 | refuse_429 | die_after_tokens | no_usage.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = {
    "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
    "prompt_tokens_details": {"cached_tokens": 600, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": 0,
                                  "accepted_prediction_tokens": 0,
                                  "rejected_prediction_tokens": 0},
}
TOOL_CALL = {"id": "call_W7x", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def _logprobs(text: str) -> dict:
    tokens = text.split(" ")
    return {"content": [{"token": t, "logprob": -0.25 * (i + 1), "bytes": list(t.encode()),
                         "top_logprobs": [{"token": t, "logprob": -0.25 * (i + 1),
                                           "bytes": list(t.encode())}]}
                        for i, t in enumerate(tokens)], "refusal": None}


def answer_for(body: dict) -> dict:
    """The whole (non-streamed) chat answer's choices, by what the request asks."""
    choices = []
    for index in range(body.get("n") or 1):
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "refusal": None,
                       "tool_calls": [TOOL_CALL]}
            finish = "tool_calls"
        elif (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            message = {"role": "assistant", "content": '{"answer": 42}', "refusal": None}
            finish = "stop"
        elif "forbidden" in json.dumps(body.get("messages")):
            message = {"role": "assistant", "content": None,
                       "refusal": "I can't help with that."}
            finish = "stop"
        else:
            message = {"role": "assistant", "content": f"Choice {index} says hi",
                       "refusal": None}
            finish = "stop"
        choice = {"index": index, "message": message,
                  "logprobs": _logprobs(message["content"] or "") if body.get("logprobs")
                  else None, "finish_reason": finish}
        choices.append(choice)
    return {"id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000,
            "model": body.get("model"), "system_fingerprint": "fp_fake", "choices": choices,
            "usage": copy.deepcopy(USAGE)}


def stream_for(body: dict) -> list[dict]:
    """The streamed chunks (without the usage chunk) of the same answer."""
    chunks = []
    base = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1700000000,
            "model": body.get("model"), "system_fingerprint": "fp_fake"}
    for choice in answer_for(body)["choices"]:
        index, message = choice["index"], choice["message"]
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            chunks.append({**base, "choices": [{"index": index, "delta": {
                "role": "assistant", "content": None, "tool_calls": [
                    {"index": 0, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}]},
                "logprobs": None, "finish_reason": None}]})
            for part in ('{"city"', ': "Par', 'is"}'):
                chunks.append({**base, "choices": [{"index": index, "delta": {
                    "tool_calls": [{"index": 0, "function": {"arguments": part}}]},
                    "logprobs": None, "finish_reason": None}]})
        else:
            chunks.append({**base, "choices": [{"index": index, "delta": {
                "role": "assistant", "content": "", "refusal": None}, "logprobs": None,
                "finish_reason": None}]})
            key = "refusal" if message.get("refusal") else "content"
            words = (message[key] or "").split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                logprobs = None
                if choice["logprobs"]:
                    logprobs = {"content": [choice["logprobs"]["content"][i]], "refusal": None}
                chunks.append({**base, "choices": [{"index": index, "delta": {key: piece},
                                                    "logprobs": logprobs,
                                                    "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                            "finish_reason": choice["finish_reason"]}]})
    return chunks


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer()

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, payload) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def _answer(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.requests.append({"path": self.path, "body": body,
                                "authorization": self.headers.get("Authorization")})
        behaviour = server.behaviour
        if behaviour == "refuse_503":
            self._json(503, {"error": {"message": "overloaded", "type": "server_error"}})
            return
        if behaviour == "refuse_429":
            self._json(429, {"error": {"message": "slow down", "type": "rate_limit"}})
            return
        if self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            self._json(200, {"object": "list", "model": body["model"],
                             "data": [{"object": "embedding", "index": i,
                                       "embedding": [0.5, -0.5, float(i)]}
                                      for i in range(len(inputs))],
                             "usage": {"prompt_tokens": len(inputs),
                                       "total_tokens": len(inputs)}})
            return
        if not body.get("stream"):
            answer = answer_for(body)
            if behaviour == "no_usage":
                del answer["usage"]
            self._json(200, answer)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for number, chunk in enumerate(stream_for(body)):
            if behaviour == "die_after_tokens" and number == 3:
                self.close_connection = True
                return  # the connection drops: no finish, no [DONE]
            self._sse(chunk)
        if behaviour != "no_usage" and (body.get("stream_options") or {}).get("include_usage"):
            self._sse({"id": "chatcmpl-upstream", "object": "chat.completion.chunk",
                       "created": 1700000000, "model": body.get("model"), "choices": [],
                       "usage": USAGE})
        self._sse("[DONE]")
        self.close_connection = True


class FakeOpenAI:
    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.behaviour = "ok"
        self.server.requests = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    @property
    def requests(self) -> list[dict]:
        return self.server.requests

    @property
    def behaviour(self) -> str:
        return self.server.behaviour

    @behaviour.setter
    def behaviour(self, value: str) -> None:
        self.server.behaviour = value

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
