"""Backends behind one small interface: `generate()` returns a TokenStream that yields
text pieces and, once exhausted, tells the finish reason and (when known) the usage;
`agenerate()` returns the same for `async for` (the ASGI gateway: a stream waits on the
upstream without holding a thread).

Token-counting rule (the demo tokenizer, also the fallback when an upstream does not
report usage): a token is a run of word characters (`\\w+`) or one single character
that is neither a word character nor whitespace. "Hello, world!" is 4 tokens.
A chat prompt is counted over "role: content" lines joined with newlines.

Backends are configured in settings.INFERENCE_BACKENDS, keyed by the name an AiModel's
`backend` field holds: {"ENGINE": "demo"} or {"ENGINE": "openai_compatible",
"BASE_URL": ..., "API_KEY": ..., "TIMEOUT_SECONDS": ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
from django.conf import settings

from inference.exceptions import UpstreamError, UpstreamTimeout

TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text or ""))


@dataclass
class Prompt:
    """What the customer sent: chat messages or a plain completion prompt."""

    kind: str  # "chat" or "completion"
    messages: list[dict] = field(default_factory=list)
    text: str = ""

    @property
    def flat_text(self) -> str:
        if self.kind == "chat":
            return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)
        return self.text

    @property
    def last_user_text(self) -> str:
        if self.kind != "chat":
            return self.text
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        return self.flat_text


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int


class TokenStream:
    """Iterate for text pieces; afterwards `finish_reason` and `usage` (None: count yourself)."""

    finish_reason: str = "stop"
    usage: Usage | None = None

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        self.close()


# --- demo --------------------------------------------------------------------------

_VOCAB = [
    "the", "a", "credit", "token", "ledger", "model", "stream", "answer", "prompt", "balance",
    "metered", "quick", "careful", "bright", "honest", "small", "large", "river", "mountain",
    "signal", "window", "promotion", "request", "response", "every", "exactly", "once", "hold",
    "capture", "release", "budget", "forecast", "data", "cache", "queue", "worker", "engine",
    "value", "record", "time", "light", "shared", "simple", "clear", "steady",
]


class DemoTokenStream(TokenStream):
    def __init__(self, prompt: Prompt, max_tokens: int, delay_seconds: float):
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.delay_seconds = delay_seconds
        self._closed = False

    def _pieces(self) -> Iterator[str]:
        """Deterministic from the prompt; every piece is exactly one token under TOKEN_RE."""
        seed = int.from_bytes(hashlib.sha256(self.prompt.flat_text.encode()).digest()[:8], "big")
        rng = random.Random(seed)
        natural = 12 + seed % 40
        echo = TOKEN_RE.findall(self.prompt.last_user_text)[:6]
        yield "Demo"
        yield " reply"
        yield ":"
        produced = 3
        for word in echo:
            if produced >= natural:
                return
            yield word if not word[0].isalnum() and word[0] != "_" else " " + word
            produced += 1
        while produced < natural:
            if produced % 9 == 8:
                yield "."
            else:
                yield " " + rng.choice(_VOCAB)
            produced += 1

    def _limited(self) -> Iterator[str]:
        """The pieces up to max_tokens; afterwards finish_reason and usage are set."""
        count = 0
        self.finish_reason = "stop"
        for piece in self._pieces():
            if self._closed:
                return
            if count >= self.max_tokens:
                self.finish_reason = "length"
                break
            count += 1
            yield piece
        self.usage = Usage(prompt_tokens=count_tokens(self.prompt.flat_text), completion_tokens=count)

    def __iter__(self) -> Iterator[str]:
        for piece in self._limited():
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            yield piece

    async def __aiter__(self) -> AsyncIterator[str]:
        for piece in self._limited():
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)  # the token delay waits, never blocks
            yield piece

    def close(self) -> None:
        self._closed = True


class DemoBackend:
    """Built in: no server needed. DEMO_BACKEND_TOKEN_DELAY_MS paces the tokens."""

    def __init__(self, config: dict):
        self.config = config

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return count_tokens(prompt.flat_text)

    def generate(self, *, model_name: str, prompt: Prompt, max_tokens: int,
                 options: dict | None = None) -> TokenStream:
        delay_ms = self.config.get("TOKEN_DELAY_MS", settings.DEMO_BACKEND_TOKEN_DELAY_MS)
        return DemoTokenStream(prompt, max_tokens, float(delay_ms) / 1000.0)

    agenerate = generate  # DemoTokenStream iterates both ways


# --- OpenAI-compatible upstream ----------------------------------------------------

_PASS_THROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


class UpstreamTokenStream(TokenStream):
    def __init__(self, client: httpx.Client, url: str, payload: dict, headers: dict, kind: str):
        self.client = client
        self.url = url
        self.payload = payload
        self.headers = headers
        self.kind = kind
        self.finish_reason = "stop"
        self.usage = None
        self._context = None

    def _events(self, line: str) -> list[str] | None:
        """The text pieces of one SSE line; None at the end of the stream. Sets
        finish_reason and usage as they arrive; raises UpstreamError for an error event."""
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self._finished = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError("The upstream model server sent malformed data.") from None
        if chunk.get("error"):
            raise UpstreamError(
                f"The upstream model server failed: {_upstream_message(chunk['error'])}"
            )
        if chunk.get("usage"):
            usage = chunk["usage"]
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        pieces = []
        for choice in chunk.get("choices") or []:
            if self.kind == "chat":
                piece = (choice.get("delta") or {}).get("content") or ""
            else:
                piece = choice.get("text") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self._finished = True
            if piece:
                pieces.append(piece)
        return pieces

    def _refused(self, response) -> UpstreamError:
        return UpstreamError(f"The upstream model server answered {response.status_code}: "
                             f"{_upstream_message(response.text)}")

    def __iter__(self) -> Iterator[str]:
        self._finished = False
        try:
            self._context = self.client.stream("POST", self.url, json=self.payload,
                                               headers=self.headers)
            response = self._context.__enter__()
            if response.status_code >= 400:
                response.read()
                raise self._refused(response)
            for line in response.iter_lines():
                pieces = self._events(line)
                if pieces is None:
                    break
                yield from pieces
            if not self._finished:
                raise UpstreamError("The upstream model server closed the stream early.")
        except httpx.TimeoutException:
            raise UpstreamTimeout("The upstream model server timed out.") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"Could not reach the upstream model server ({exc}).") from None
        finally:
            self.close()

    def close(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            with contextlib.suppress(httpx.HTTPError):
                context.__exit__(None, None, None)


class AsyncUpstreamTokenStream(UpstreamTokenStream):
    """The same stream read with httpx.AsyncClient: waiting for a token holds no thread."""

    async def __aiter__(self) -> AsyncIterator[str]:
        self._finished = False
        try:
            self._context = self.client.stream("POST", self.url, json=self.payload,
                                               headers=self.headers)
            response = await self._context.__aenter__()
            if response.status_code >= 400:
                await response.aread()
                raise self._refused(response)
            done = False
            async for line in _lines(response):
                if done:
                    continue  # read to the end: the connection then goes back to the pool
                pieces = self._events(line)
                if pieces is None:
                    done = True
                    continue
                for piece in pieces:
                    yield piece
            if not self._finished:
                raise UpstreamError("The upstream model server closed the stream early.")
        except httpx.TimeoutException:
            raise UpstreamTimeout("The upstream model server timed out.") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"Could not reach the upstream model server ({exc}).") from None
        finally:
            await self.aclose()

    def close(self) -> None:  # a sync close cannot end an async response: aclose() does
        pass

    async def aclose(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            with contextlib.suppress(httpx.HTTPError):
                await context.__aexit__(None, None, None)


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of an SSE body: httpx's aiter_lines costs several generator layers and a
    text decoder per chunk; the events are UTF-8 lines, split here on the bytes."""
    rest = b""
    async for data in response.aiter_bytes():
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if rest:
        yield rest.rstrip(b"\r").decode("utf-8", "replace")


def _upstream_message(payload) -> str:
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return payload[:200]
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner)[:200]
        return str(inner)[:200]
    return str(payload)[:200]


ASYNC_CLIENT_SHARDS = 8


class OpenAICompatibleBackend:
    """Streams from an upstream OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI)."""

    def __init__(self, config: dict):
        self.base_url = config.get("BASE_URL", "").rstrip("/")
        self.api_key = config.get("API_KEY", "")
        timeout = float(config.get("TIMEOUT_SECONDS", 60))
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self.client = httpx.Client(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        # An AsyncClient belongs to one event loop: one per loop (a worker process has one).
        self._async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _async_client(self) -> httpx.AsyncClient:
        """One of ASYNC_CLIENT_SHARDS clients of this loop, in turn. httpcore's pool walks
        all its connections (and checks each idle socket) whenever a request starts or
        ends, so one pool of hundreds of streams costs more per token than the streams'
        own work; shards keep each pool short."""
        loop = asyncio.get_running_loop()
        shards = self._async_clients.get(loop)
        if shards is None:
            shards = self._async_clients[loop] = (itertools.cycle([
                httpx.AsyncClient(
                    timeout=self.timeout,
                    limits=httpx.Limits(max_connections=1000 // ASYNC_CLIENT_SHARDS,
                                        max_keepalive_connections=200 // ASYNC_CLIENT_SHARDS))
                for _ in range(ASYNC_CLIENT_SHARDS)]))
        return next(shards)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return count_tokens(prompt.flat_text)

    def generate(self, *, model_name: str, prompt: Prompt, max_tokens: int,
                 options: dict | None = None) -> TokenStream:
        return UpstreamTokenStream(self.client, *self._request(model_name, prompt, max_tokens,
                                                               options))

    def agenerate(self, *, model_name: str, prompt: Prompt, max_tokens: int,
                  options: dict | None = None) -> TokenStream:
        return AsyncUpstreamTokenStream(self._async_client(), *self._request(
            model_name, prompt, max_tokens, options))

    def _request(self, model_name: str, prompt: Prompt, max_tokens: int,
                 options: dict | None) -> tuple[str, dict, dict, str]:
        if not self.base_url:
            raise UpstreamError("This model's upstream server is not configured.")
        payload: dict = {
            "model": model_name,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if prompt.kind == "chat":
            payload["messages"] = prompt.messages
            url = f"{self.base_url}/chat/completions"
        else:
            payload["prompt"] = prompt.text
            url = f"{self.base_url}/completions"
        for name in _PASS_THROUGH:
            if options and options.get(name) is not None:
                payload[name] = options[name]
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return url, payload, headers, prompt.kind


ENGINES = {"demo": DemoBackend, "openai_compatible": OpenAICompatibleBackend}
_instances: dict[tuple, object] = {}
_lock = threading.Lock()


def get_backend(name: str):
    """The backend named `name` in settings.INFERENCE_BACKENDS (instances are reused)."""
    config = settings.INFERENCE_BACKENDS.get(name)
    if config is None or config.get("ENGINE") not in ENGINES:
        raise UpstreamError(f"The backend {name!r} of this model is not configured.")
    cache_key = (name, json.dumps(config, sort_keys=True, default=str))
    with _lock:
        backend = _instances.get(cache_key)
        if backend is None:
            backend = _instances[cache_key] = ENGINES[config["ENGINE"]](config)
    return backend
