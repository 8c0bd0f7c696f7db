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
import base64
import contextlib
import hashlib
import json
import random
import re
import struct
import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import httpx
import orjson
from django.conf import settings

from credits.money import TokenCounts
from inference.exceptions import (
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)

TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text or ""))


@dataclass
class Prompt:
    """What the customer sent: chat messages, a plain completion prompt, or the inputs of an
    embedding (strings or token arrays)."""

    kind: str  # "chat", "completion" or "embedding"
    messages: list[dict] = field(default_factory=list)
    text: str = ""
    inputs: list = field(default_factory=list)

    @property
    def flat_text(self) -> str:
        if self.kind == "chat":
            return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)
        if self.kind == "embedding":
            return "\n".join(i if isinstance(i, str) else " ".join(map(str, i))
                             for i in self.inputs)
        return self.text

    @property
    def last_user_text(self) -> str:
        if self.kind != "chat":
            return self.text
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        return self.flat_text

    def count_tokens(self) -> int:
        """Our counter's prompt tokens (a token array counts its ids)."""
        if self.kind == "embedding":
            return sum(count_tokens(i) if isinstance(i, str) else len(i) for i in self.inputs)
        return count_tokens(self.flat_text)


@dataclass
class Usage:
    """Tokens as the upstream reported them. As in OpenAI's usage object, `cached_tokens`
    and `cache_write_tokens` are part of `prompt_tokens`, `reasoning_tokens` of
    `completion_tokens`. `details` is the upstream's usage object as sent."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    details: dict | None = None

    @classmethod
    def from_openai(cls, usage: dict) -> Usage:
        prompt = usage.get("prompt_tokens_details") or {}
        completion = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            cached_tokens=_count(prompt.get("cached_tokens")),
            cache_write_tokens=_count(prompt.get("cache_write_tokens")
                                      or prompt.get("cache_creation_tokens")),
            reasoning_tokens=_count(completion.get("reasoning_tokens")),
            details=usage,
        )

    def token_counts(self) -> TokenCounts:
        """The tokens by price class; details larger than their totals are capped (an upstream
        cannot make a call cheaper by over-reporting its cache)."""
        cached = min(self.cached_tokens, self.prompt_tokens)
        written = min(self.cache_write_tokens, self.prompt_tokens - cached)
        reasoning = min(self.reasoning_tokens, self.completion_tokens)
        return TokenCounts(input=self.prompt_tokens - cached - written, cached_input=cached,
                           cache_write=written, output=self.completion_tokens - reasoning,
                           reasoning=reasoning)


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Relay(str):
    """Upstream output passed on as the upstream sent it: `chunks`, its JSON objects (stream
    chunks, or the one response of a non-streamed call). As a str it is the text they carry
    (content, refusals, tool-call names and arguments), which our counter counts."""

    chunks: list[dict]

    def __new__(cls, text: str, chunks: list[dict]):
        relay = super().__new__(cls, text)
        relay.chunks = chunks
        return relay


def chunk_text(chunk: dict, *, key: str = "delta") -> str:
    """The generated text one upstream chunk (key "delta") or answer (key "message") holds,
    over every choice."""
    parts = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            parts.append(str(choice["text"]))
        message = choice.get(key)
        if not isinstance(message, dict):
            continue
        for name in ("content", "refusal", "reasoning_content"):
            if isinstance(message.get(name), str):
                parts.append(message[name])
        calls = list(message.get("tool_calls") or ())
        if isinstance(message.get("function_call"), dict):
            calls.append({"function": message["function_call"]})
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.extend(str(function.get(n) or "") for n in ("name", "arguments"))
    return "".join(parts)


class TokenStream:
    """Iterate for text pieces (str, or a Relay of upstream chunks); afterwards
    `finish_reason` and `usage` (None: count yourself), and `attempts`, the upstreams tried."""

    finish_reason: str = "stop"
    usage: Usage | None = None
    attempts: tuple = ()
    upstream: str = ""

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


# Request fields the demo cannot serve, each with the values that ask nothing of it: any other
# value is refused with a 400 naming the field and the model, never silently dropped.
DEMO_CANNOT_SERVE: dict[str, tuple] = {
    "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "response_format": ({"type": "text"},), "logprobs": (False,), "top_logprobs": (0,),
    "logit_bias": ({},), "n": (1,), "best_of": (1,), "echo": (False,), "suffix": ("",),
    "audio": (), "modalities": (["text"],), "prediction": (), "reasoning_effort": (),
    "web_search_options": (),
}


def _asks_for(value, neutral: tuple) -> bool:
    return value is not None and not any(
        type(value) is type(n) and value == n for n in neutral)


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


DEMO_EMBEDDING_DIMENSIONS = 64


class AnswerStream(TokenStream):
    """A whole answer at once (an embedding): one Relay holding the response."""

    def __init__(self, response: dict, usage: Usage | None):
        self.response, self.usage = response, usage

    def __iter__(self) -> Iterator[str]:
        yield Relay("", [self.response])

    async def __aiter__(self) -> AsyncIterator[str]:
        yield Relay("", [self.response])


def demo_embedding(item, dimensions: int) -> list[float]:
    """A unit vector determined by the input (a string or a token array)."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [round(v / norm, 8) for v in vector]


def encode_embedding(vector: list[float], encoding_format: str | None):
    """OpenAI's encodings: a list of floats, or base64 of little-endian float32s."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class DemoBackend:
    """Built in: no server needed. DEMO_BACKEND_TOKEN_DELAY_MS paces the tokens."""

    def __init__(self, config: dict):
        self.config = config

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return prompt.count_tokens()

    def unsupported(self, options: dict | None) -> str | None:
        """The first request field this backend cannot serve, or None."""
        for name, neutral in DEMO_CANNOT_SERVE.items():
            if options and _asks_for(options.get(name), neutral):
                return name
        return None

    def generate(self, *, model_name: str, prompt: Prompt, max_tokens: int,
                 options: dict | None = None, stream: bool = True) -> TokenStream:
        if prompt.kind == "embedding":
            return self._embed(model_name, prompt, options or {})
        delay_ms = self.config.get("TOKEN_DELAY_MS", settings.DEMO_BACKEND_TOKEN_DELAY_MS)
        return DemoTokenStream(prompt, max_tokens, float(delay_ms) / 1000.0)

    agenerate = generate  # DemoTokenStream iterates both ways

    def _embed(self, model_name: str, prompt: Prompt, options: dict) -> AnswerStream:
        dimensions = options.get("dimensions") or DEMO_EMBEDDING_DIMENSIONS
        data = [{"object": "embedding", "index": index,
                 "embedding": encode_embedding(demo_embedding(item, dimensions),
                                               options.get("encoding_format"))}
                for index, item in enumerate(prompt.inputs)]
        tokens = prompt.count_tokens()
        return AnswerStream({"object": "list", "data": data, "model": model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                            Usage(prompt_tokens=tokens, completion_tokens=0))


# --- OpenAI-compatible upstream ----------------------------------------------------

class UpstreamTokenStream(TokenStream):
    """One request to an OpenAI-compatible upstream, read synchronously.

    Streamed, the upstream's chunks are passed on as they came (Relay), each carrying the
    text our counter counts; chunks without text before the first that has some (the role
    chunk) go out with it, so an error before the first token is still an HTTP status and a
    reason to fall back. The upstream's usage chunk is read, not relayed (ours, with the
    cost, replaces it). Not streamed: one Relay of the whole answer.
    """

    def __init__(self, client, url: str, payload: dict, headers: dict, kind: str):
        self.client = client
        self.url = url
        self.payload = payload
        self.headers = headers
        self.kind = kind
        self.streamed = bool(payload.get("stream"))
        self.finish_reason = "stop"
        self.usage = None
        self._context = None
        self._held: list[dict] = []
        self._texted = False
        self._finished = False

    def _line(self, line: str) -> list[Relay] | None:
        """What one SSE line relays; None at the end of the stream. Sets finish_reason and
        usage as they arrive; raises UpstreamError for an error event."""
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self._finished = True
            return None
        try:
            chunk = _loads(data)
        except ValueError:
            raise UpstreamError("The upstream model server sent malformed data.") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("The upstream model server sent malformed data.")
        if chunk.get("error"):
            raise UpstreamError(
                f"The upstream model server failed: {_upstream_message(chunk['error'])}"
            )
        usage = chunk.pop("usage", None)
        if isinstance(usage, dict):
            self.usage = Usage.from_openai(usage)
        choices = chunk.get("choices")
        if not choices:
            return []
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self._finished = True
        text = chunk_text(chunk)
        if not text and not self._texted:
            self._held.append(chunk)
            return []
        self._texted = self._texted or bool(text)
        chunks, self._held = [*self._held, chunk], []
        return [Relay(text, chunks)]

    def _leftover(self) -> list[Relay]:
        """Chunks held for a first token that never came (an empty answer)."""
        chunks, self._held = self._held, []
        return [Relay("", chunks)] if chunks else []

    def _answer(self, body: bytes) -> Relay:
        """A non-streamed answer, whole."""
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise UpstreamError("The upstream model server sent malformed data.")
        if isinstance(answer.get("usage"), dict):
            self.usage = Usage.from_openai(answer["usage"])
        choices = [c for c in answer.get("choices") or () if isinstance(c, dict)]
        if choices:
            self.finish_reason = choices[0].get("finish_reason") or "stop"
        self._finished = True
        return Relay(chunk_text(answer, key="message"), [answer])

    def _refused(self, status: int, text: str) -> UpstreamError:
        message = f"The upstream model server answered {status}: {_upstream_message(text)}"
        if status >= 500 or status == 429:
            return UpstreamUnavailable(message, status=status)
        if status in (400, 422):
            return UpstreamRefused(message)
        return UpstreamError(message)

    def __iter__(self) -> Iterator[str]:
        try:
            self._context = self.client.stream("POST", self.url, json=self.payload,
                                               headers=self.headers)
            response = self._context.__enter__()
            if response.status_code >= 400:
                response.read()
                raise self._refused(response.status_code, response.text)
            if not self.streamed:
                yield self._answer(response.read())
                return
            for line in response.iter_lines():
                relays = self._line(line)
                if relays is None:
                    break
                yield from relays
            if not self._finished:
                raise UpstreamError("The upstream model server closed the stream early.")
            yield from self._leftover()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UpstreamUnavailable(
                f"Could not reach the upstream model server ({exc}).") from None
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
    """The same stream read with aiohttp: waiting for a token holds no thread.

    aiohttp rather than httpx.AsyncClient here: its C parser and plain stream reader cost
    about a third of httpx's per-token Python (httpcore, h11 and anyio per read), which was
    the largest part of a stream's CPU (bench/gateway.py; the README's Benchmarks).
    """

    def __init__(self, timeout: aiohttp.ClientTimeout, url: str, payload: dict, headers: dict,
                 kind: str):
        super().__init__(None, url, payload, headers, kind)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            session, owned = upstream_sessions.session()
            self._session = session if owned else None
            # httpx's encoding of a JSON body (compact, UTF-8)
            body = json.dumps(self.payload, ensure_ascii=False, separators=(",", ":"))
            response = self._context = await session.post(
                self.url, data=body.encode(), timeout=self.timeout,
                headers={**self.headers, "Content-Type": "application/json"})
            if response.status >= 400:
                text = (await response.read()).decode("utf-8", "replace")
                raise self._refused(response.status, text)
            if not self.streamed:
                yield self._answer(await response.read())
                return
            done = False
            async for line in _lines(response.content.iter_any()):
                if done:
                    continue  # read to the end: the connection then goes back to the pool
                relays = self._line(line)
                if relays is None:
                    done = True
                    continue
                for relay in relays:
                    yield relay
            if not self._finished:
                raise UpstreamError("The upstream model server closed the stream early.")
            for relay in self._leftover():
                yield relay
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamUnavailable(
                f"Could not reach the upstream model server ({exc}).") from None
        except TimeoutError:  # aiohttp's read timeout
            raise UpstreamTimeout("The upstream model server timed out.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Could not reach the upstream model server ({exc}).") from None
        finally:
            await self.aclose()

    def close(self) -> None:  # a sync close cannot end an async response: aclose() does
        pass

    async def aclose(self) -> None:
        """Ends the upstream request: a stream read to its end gives its connection back to
        the pool; one ended early (the client went away) closes it, which tells the upstream
        to stop generating."""
        response, self._context = self._context, None
        session, self._session = self._session, None
        if response is not None:
            if response.content.at_eof():
                response.release()
            else:
                response.close()
        if session is not None:
            await session.close()


async def _lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The lines of an SSE body, split on the bytes as they arrive (the events are UTF-8
    lines); cheaper per token than the reader's own readline."""
    rest = b""
    async for data in chunks:
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if rest:
        yield rest.rstrip(b"\r").decode("utf-8", "replace")


def _loads(data: str | bytes):
    """json.loads, by orjson (a stream parses a chunk per token); the standard library for
    what orjson refuses but Python's JSON reads (NaN, integers beyond 64 bits)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


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


# Connections a serving process keeps to each upstream, as each backend's own client had:
# one busy upstream never takes the connections another needs. A stream past them waits for
# one (within the upstream's timeout; see OpenAICompatibleBackend).
UPSTREAM_CONNECTIONS_PER_HOST = 1000


class UpstreamSessions:
    """aiohttp sessions for reading upstreams asynchronously, one per serving event loop.

    A session (its connection pool) belongs to one event loop. The ASGI server tells us
    which loops serve for the process's life (config.asgi's lifespan): there one session
    is kept, its connections reused, and it is closed when the server stops. Any other
    loop (an async view run by the WSGI test client gets a loop per request) has each
    stream open and close a session of its own, so nothing outlives its loop.
    """

    def __init__(self):
        self._kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def keep_for_this_loop(self) -> None:
        self._kept.setdefault(asyncio.get_running_loop(), None)

    async def close_this_loop(self) -> None:
        session = self._kept.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    def session(self) -> tuple[aiohttp.ClientSession, bool]:
        """A session for one stream, and whether the stream owns it (and must close it)."""
        loop = asyncio.get_running_loop()
        if loop not in self._kept:
            return self._new(limit=1), True
        session = self._kept[loop]
        if session is None or session.closed:
            session = self._kept[loop] = self._new(
                limit=0, limit_per_host=UPSTREAM_CONNECTIONS_PER_HOST)
        return session, False

    @staticmethod
    def _new(*, limit: int, limit_per_host: int = 0) -> aiohttp.ClientSession:
        # auto_decompress stays on; no User-Agent of aiohttp's own (as httpx sent its own)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host),
            skip_auto_headers=("User-Agent",))


upstream_sessions = UpstreamSessions()


class OpenAICompatibleBackend:
    """An upstream OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI). The client's
    request goes through as sent, unknown fields included; we set only the model's upstream
    name, the token limit we hold for, and streaming (with usage)."""

    def __init__(self, config: dict):
        self.base_url = config.get("BASE_URL", "").rstrip("/")
        self.api_key = config.get("API_KEY", "")
        timeout = float(config.get("TIMEOUT_SECONDS", 60))
        connect = float(config.get("CONNECT_TIMEOUT_SECONDS") or min(timeout, 5.0))
        self.timeout = httpx.Timeout(timeout, connect=connect)
        self.client = httpx.Client(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        # The same limits for the async reads (aiohttp's sock_read is httpx's read timeout;
        # its sock_connect, the connect timeout). aiohttp's `connect` also counts the wait
        # for a free pooled connection: that wait gets the whole timeout, so a busy pool is
        # not reported, and failed over, as an upstream that cannot be reached.
        self.async_timeout = aiohttp.ClientTimeout(total=None, connect=timeout,
                                                   sock_connect=connect, sock_read=timeout)

    def __repr__(self) -> str:  # never the key
        return f"<OpenAICompatibleBackend {self.base_url}>"

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return prompt.count_tokens()

    def unsupported(self, options: dict | None) -> str | None:
        return None  # the upstream decides (and answers 400 itself)

    def generate(self, *, model_name: str, prompt: Prompt, max_tokens: int,
                 options: dict | None = None, stream: bool = True) -> TokenStream:
        return UpstreamTokenStream(self.client, *self._request(model_name, prompt, max_tokens,
                                                               options, stream))

    def agenerate(self, *, model_name: str, prompt: Prompt, max_tokens: int,
                  options: dict | None = None, stream: bool = True) -> TokenStream:
        return AsyncUpstreamTokenStream(self.async_timeout, *self._request(
            model_name, prompt, max_tokens, options, stream))

    def _request(self, model_name: str, prompt: Prompt, max_tokens: int,
                 options: dict | None, stream: bool) -> tuple[str, dict, dict, str]:
        if not self.base_url:
            raise UpstreamError("This model's upstream server is not configured.")
        payload = build_payload(model_name=model_name, prompt=prompt, max_tokens=max_tokens,
                                body=options, stream=stream)
        path = {"chat": "chat/completions", "completion": "completions",
                "embedding": "embeddings"}[prompt.kind]
        headers = {"Accept": "text/event-stream" if payload.get("stream") else "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return f"{self.base_url}/{path}", payload, headers, prompt.kind


def build_payload(*, model_name: str, prompt: Prompt, max_tokens: int, body: dict | None,
                  stream: bool) -> dict:
    """The upstream's request: the client's `body` as sent (every field, unknown ones too),
    with the upstream's model name, our token limit in the field the client used, and
    streaming with usage when the client streams."""
    payload = dict(body or {})
    payload["model"] = model_name
    if prompt.kind == "embedding":
        payload.setdefault("input", prompt.inputs)
        for name in ("stream", "stream_options", "max_tokens"):
            payload.pop(name, None)
        return payload
    if prompt.kind == "chat":
        payload.setdefault("messages", prompt.messages)
    else:
        payload.setdefault("prompt", prompt.text)
    if payload.get("max_completion_tokens") is not None and payload.get("max_tokens") is None:
        payload["max_completion_tokens"] = max_tokens
    else:
        payload["max_tokens"] = max_tokens
    payload["stream"] = stream
    if stream:
        payload["stream_options"] = {**(payload.get("stream_options") or {}),
                                     "include_usage": True}
    else:
        payload.pop("stream_options", None)
    return payload


# --- routes: a model's deployments, tried in order --------------------------------------


@dataclass(frozen=True)
class Target:
    """One place to send a call: a backend, the model's name there, the upstream's name."""

    backend: object
    model_name: str
    upstream: str


class FallbackStream(TokenStream):
    """The targets tried in order: a connect error, a 5xx or a 429 before the first piece
    moves on to the next; once a piece was delivered, nothing does. `attempts` lists every
    try: {"upstream", "model", "outcome" (served | unavailable | failed), "status", "error",
    "ms"}."""

    def __init__(self, targets: list[Target], request: dict):
        self.targets = targets
        self.request = request
        self.attempts: list[dict] = []
        self.current: TokenStream | None = None
        self._pieces = None

    @property
    def finish_reason(self) -> str:
        return self.current.finish_reason if self.current is not None else "stop"

    @property
    def usage(self) -> Usage | None:
        return self.current.usage if self.current is not None else None

    @property
    def upstream(self) -> str:
        return self.attempts[-1]["upstream"] if self.current is not None else ""

    def _attempt(self, target: Target, started: float, outcome: str,
                 exc: BaseException | None = None) -> dict:
        entry = {"upstream": target.upstream, "model": target.model_name, "outcome": outcome,
                 "ms": int((time.monotonic() - started) * 1000)}
        if exc is not None:
            entry["error"] = str(exc)[:200]
            if getattr(exc, "upstream_status", None):
                entry["status"] = exc.upstream_status
        self.attempts.append(entry)
        return entry

    def __iter__(self) -> Iterator[str]:
        last = len(self.targets) - 1
        for index, target in enumerate(self.targets):
            started = time.monotonic()
            stream = target.backend.generate(model_name=target.model_name, **self.request)
            pieces = self._pieces = iter(stream)
            try:
                first = next(pieces, _END)
            except UpstreamUnavailable as exc:
                self._attempt(target, started, "unavailable", exc)
                if index < last:
                    continue
                raise
            except Exception as exc:
                self._attempt(target, started, "failed", exc)
                raise
            entry = self._attempt(target, started, "served")
            self.current = stream
            try:
                if first is not _END:
                    yield first
                yield from pieces
            except Exception as exc:
                entry.update(outcome="failed", error=str(exc)[:200])
                raise
            return

    async def __aiter__(self) -> AsyncIterator[str]:
        last = len(self.targets) - 1
        for index, target in enumerate(self.targets):
            started = time.monotonic()
            stream = target.backend.agenerate(model_name=target.model_name, **self.request)
            pieces = self._pieces = aiter(stream)
            try:
                first = await anext(pieces, _END)
            except UpstreamUnavailable as exc:
                self._attempt(target, started, "unavailable", exc)
                if index < last:
                    continue
                raise
            except Exception as exc:
                self._attempt(target, started, "failed", exc)
                raise
            entry = self._attempt(target, started, "served")
            self.current = stream
            try:
                if first is not _END:
                    yield first
                async for piece in pieces:
                    yield piece
            except Exception as exc:
                entry.update(outcome="failed", error=str(exc)[:200])
                raise
            return

    def close(self) -> None:
        pieces, self._pieces = self._pieces, None
        if pieces is not None and hasattr(pieces, "close"):
            pieces.close()

    async def aclose(self) -> None:
        pieces, self._pieces = self._pieces, None
        if pieces is not None and hasattr(pieces, "aclose"):
            await pieces.aclose()


_END = object()


class Route:
    """How a model's calls are served: one backend (the demo, a settings backend) or its
    deployments with fallback. Has a backend's interface."""

    def __init__(self, targets: list[Target], *, fallback: bool):
        if not targets:
            raise UpstreamError("This model has no upstream to serve it.")
        self.targets = targets
        self.fallback = fallback

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.targets[0].backend.count_prompt_tokens(prompt)

    def unsupported(self, options: dict | None) -> str | None:
        for target in self.targets:
            name = target.backend.unsupported(options)
            if name:
                return name
        return None

    def generate(self, *, model_name: str = "", prompt: Prompt, max_tokens: int,
                 options: dict | None = None, stream: bool = True) -> TokenStream:
        request = {"prompt": prompt, "max_tokens": max_tokens, "options": options,
                   "stream": stream}
        if not self.fallback:  # no layer in between: the demo's tokens go straight through
            target = self.targets[0]
            return target.backend.generate(model_name=target.model_name, **request)
        return FallbackStream(self.targets, request)

    def agenerate(self, *, model_name: str = "", prompt: Prompt, max_tokens: int,
                  options: dict | None = None, stream: bool = True) -> TokenStream:
        request = {"prompt": prompt, "max_tokens": max_tokens, "options": options,
                   "stream": stream}
        if not self.fallback:
            target = self.targets[0]
            return target.backend.agenerate(model_name=target.model_name, **request)
        return FallbackStream(self.targets, request)


ENGINES = {"demo": DemoBackend, "openai_compatible": OpenAICompatibleBackend}
_instances: dict[tuple, object] = {}
_lock = threading.Lock()


def backend_from_config(config: dict, *, name: str = ""):
    """The backend a config describes ({"ENGINE": ..., ...}); instances are reused."""
    if config is None or config.get("ENGINE") not in ENGINES:
        raise UpstreamError(f"The backend {name!r} of this model is not configured.")
    # Hashed: the key's text holds the API key, and a dict key can end up in a debugger.
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    with _lock:
        backend = _instances.get((name, digest))
        if backend is None:
            backend = _instances[(name, digest)] = ENGINES[config["ENGINE"]](config)
    return backend


def get_backend(name: str):
    """The backend named `name` in settings.INFERENCE_BACKENDS (instances are reused)."""
    return backend_from_config(settings.INFERENCE_BACKENDS.get(name), name=name)
