"""The OpenAI-compatible endpoints and /api/inference: thin doors onto inference.services.

Streams are primed before the response starts: the hold, the first token and the
promotion check happen while an HTTP error status can still be sent; a failure after
that goes out as a final SSE event with an `error` object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import orjson
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.response import Response

from accounts.rest import JsonAPIView
from accounts.throttles import ApiKeyRateThrottle, count_actual_tokens
from credits.money import TOKEN_CLASSES, format_usd
from inference import idempotency, services
from inference.backends import Prompt, Relay
from inference.errors import error_body, exception_handler, is_refusal
from inference.exceptions import InferenceError
from inference.models import AiModel
from inference.serializers import (
    ChatCompletionRequestSerializer,
    CompletionRequestSerializer,
    EmbeddingRequestSerializer,
    InferenceRequestSerializer,
    validated_request,
)

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="Non-streaming calls: a replay with the same body returns the stored response.",
)


def _api_key(request):
    return request.auth if hasattr(request.auth, "key_hash") else None


class ModelListView(JsonAPIView):
    """GET /v1/models: the active models and their current prices."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        data = []
        for model in AiModel.objects.active().prefetch_related("prices"):
            price = model.price_at()
            if price is None:
                continue
            data.append({
                "id": model.id,
                "object": "model",
                "created": int(model.created_at.timestamp()),
                "owned_by": "tokenbank",
                "context_length": model.context_length,
                "max_output_tokens": model.max_output_tokens,
                "pricing": {
                    "input_per_million": format_usd(price.input_price_per_million_micros),
                    "output_per_million": format_usd(price.output_price_per_million_micros),
                    **_class_pricing(price),
                    "currency": "USD",
                },
            })
        return Response({"object": "list", "data": data})


@dataclass
class Begun:
    """What the pre-stream step produced: a started call, or a stored reply to replay."""

    data: dict
    call: services.MeteredCall | None = None
    record: object = None  # the claimed Idempotency-Key, if any
    replay: object = None


def _class_pricing(price) -> dict:
    """The other token classes' prices (defaults resolved)."""
    prices = price.token_prices()
    return {"cached_input_per_million": format_usd(prices.cached_input),
            "cache_write_per_million": format_usd(prices.cache_write),
            "reasoning_per_million": format_usd(prices.reasoning)}


class _MeteredView(JsonAPIView):
    """The metered endpoints, as async views: validation and the OpenAPI schema are DRF's;
    the upstream is awaited; the short ledger steps (checks, hold, first token, settlement,
    the idempotency record) run through `self.run` (inference.services.ledger_runner)."""

    throttle_classes = [ApiKeyRateThrottle]
    serializer_class: type = ChatCompletionRequestSerializer
    endpoint = ""
    id_prefix = "gen"
    chunk_object = ""  # the `object` of each streamed chunk
    answer_reads_database = False  # render() needs a query (runs as a ledger step then)

    def build_prompt(self, data) -> Prompt:
        raise NotImplementedError

    def render(self, call: services.MeteredCall, data, created: int) -> dict:
        raise NotImplementedError

    async def dispatch(self, request, *args, **kwargs):
        """DRF's dispatch, awaited. Authentication, permissions, throttles, validation and
        the call's start (the hold) are one ledger step (`begin`): one thread hop and one
        pooled connection before the upstream is asked; exceptions become the API's error
        envelope."""
        self.args, self.kwargs = args, kwargs
        self.asgi = isinstance(request, ASGIRequest)
        self.run = services.ledger_runner(asgi=self.asgi)
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            if request.method.lower() != "post":
                await self.run(self.initial, request, *args, **kwargs)
                raise MethodNotAllowed(request.method)
            response = await self.post(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

    def begin(self, request) -> Begun:
        """The pre-stream phase, synchronously, in one ledger step: DRF's checks, the
        serializer, the Idempotency-Key claim (non-streaming calls), the hold, and for a
        stream the balance its headers show."""
        self.initial(request)
        data = validated_request(self.serializer_class, request.data)
        stream = bool(data.get("stream"))
        request_id = services.new_request_id(self.id_prefix)
        record = None
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not stream:
            record, replay = idempotency.claim_idempotency_key(
                user=request.user, key=idempotency_key, endpoint=self.endpoint,
                body=request.data, request_id=request_id)
            if replay is not None:
                return Begun(data=data, replay=replay)
        try:
            call = services.start_call(
                user=request.user, api_key=_api_key(request),
                model_id=data["model"], prompt=self.build_prompt(data),
                max_tokens=data.get("max_tokens"), endpoint=self.endpoint, streamed=stream,
                # The request as sent: every field goes through to the upstream.
                options=request.data, request_id=request_id,
                # A stream's client waits for its first token: its upstream is asked while
                # the hold commits. An answer is waited for whole; it keeps the plain order.
                on_hold_granted=self._ask_upstream_early if stream else None,
            )
            # The key's tokens-per-minute count takes the real usage once the call ends.
            count_actual_tokens(request, lambda: call.charged_prompt_tokens + call.completion_tokens)
            if stream and call.billed:
                call.balance_micros()  # for the headers, on this step's connection
        except Exception:
            if record is not None:
                # A call refused before it started is released uncharged: the key may be retried.
                idempotency.forget_idempotency_key(record=record)
            raise
        return Begun(data=data, call=call, record=record)

    def _ask_upstream_early(self, call) -> None:
        """start_call's `on_hold_granted`, on the ledger thread under the account's lock: the
        event loop asks the upstream while the hold is written and committed. Scheduled
        before this step's result, so it has run by the time `post` has the hold or the
        step's error."""
        self.loop.call_soon_threadsafe(self._open_upstream, call)

    def _open_upstream(self, call) -> None:
        if not self.client_left:  # no upstream work for nobody
            self.asked_early = call
            call.open_upstream()

    async def post(self, request):
        self.loop, self.asked_early, self.client_left = asyncio.get_running_loop(), None, False
        # The step runs to its end on its thread whatever happens to this request.
        starting = asyncio.ensure_future(self.run(self.begin, request))
        try:
            begun = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # What the step began (a hold, a key's claim) would otherwise wait for the sweep.
            self.client_left = True
            await asyncio.shield(self._end_unstarted(starting))
            raise
        except BaseException:
            if self.asked_early is not None:  # the hold or the rest of the start failed
                await asyncio.shield(self.asked_early.abandon_upstream())
            raise
        if begun.replay is not None:
            replay = begun.replay
            return Response(replay.body, status=replay.status_code,
                            headers={**replay.headers, "Idempotent-Replayed": "true"})
        data, call, record = begun.data, begun.call, begun.record
        stream = bool(data.get("stream"))
        created = int(time.time())
        try:
            if stream:
                return await self.stream_response(call, data, created)
            async for _ in call.atokens(self.run):
                pass
        except asyncio.CancelledError:
            if record is not None:
                await asyncio.shield(self._close_key_of_left_call(call, record))
            raise
        except Exception:
            if record is not None:
                # A non-streaming call that fails is released uncharged: the key may be retried.
                await self.run(idempotency.forget_idempotency_key, record=record)
            raise
        # The call is settled (charged): from here on a failure keeps the key, or a retry pays again.
        try:
            if self.answer_reads_database or not call.balance_known:
                body, headers = await self.run(self.answer, call, data, created)
            else:
                body, headers = self.answer(call, data, created)  # no query: no thread hop
        except Exception:
            if record is not None:
                await self.run(idempotency.refuse_replays, record=record, status_code=500)
            raise
        if record is not None:
            await self.run(idempotency.store_idempotent_response, record=record, status_code=200,
                           body=body, headers=headers)
        return Response(body, headers=headers)

    async def _close_key_of_left_call(self, call, record) -> None:
        """The Idempotency-Key of an answer whose client left while it was generated, once
        its settlement is done: free for a retry when nothing was charged (the usual case: an
        answer not delivered is not charged), refused at once (409) when the call was charged
        just before, so it is never run and charged twice. It stayed "still being processed"
        until the stale-hold age before."""
        await call.settlement()
        if call.cost_micros:
            await self.run(idempotency.refuse_replays, record=record, status_code=200)
        else:
            await self.run(idempotency.forget_idempotency_key, record=record)

    async def _end_unstarted(self, starting: asyncio.Future) -> None:
        """Undoes what a start its client walked away from began, once the step is done: its
        upstream request, its hold (settled as a disconnect, nothing delivered) and its
        Idempotency-Key claim (free to be retried). A step that failed wrote nothing, unless
        its hold's COMMIT reply was lost: the stale-hold sweep settles that one."""
        await asyncio.wait([starting])
        if starting.cancelled() or starting.exception() is not None:
            failure = None if starting.cancelled() else starting.exception()
            if failure is not None and not is_refusal(failure):  # never lost with its client
                logger.error("A call to %s failed to start after its client left",
                             self.request.path, exc_info=failure)
            if self.asked_early is not None:
                await self.asked_early.abandon_upstream()
            return
        begun = starting.result()
        if begun.call is not None:
            await begun.call.end_unstarted(self.run)
        if begun.record is not None:
            await self.run(idempotency.forget_idempotency_key, record=begun.record)

    def answer(self, call, data, created) -> tuple[dict, dict]:
        """The body and headers of a settled non-streaming call."""
        body = self.render(call, data, created)
        headers = {"X-Request-Id": call.request_id}
        if call.billed:
            headers["X-Credits-Balance"] = format_usd(call.balance_micros())
            headers["X-Credits-Charged"] = format_usd(call.cost_micros)
        if call.promotion_applied:
            headers["X-Promotion-Applied"] = "true"
        return body, headers

    def usage(self, call) -> dict:
        """OpenAI's usage object (the upstream's, details and all, when it sent one) with
        what the call cost: `cost` and `cost_details` by token class; `estimated` when the
        upstream sent no usage and our counter's numbers were charged."""
        return usage_json(call)

    async def stream_response(self, call, data, created) -> StreamingHttpResponse:
        tokens = call.atokens(self.run)
        try:
            first = await anext(tokens)  # errors before the first token are still HTTP statuses
        except StopAsyncIteration:
            first = None
        events = self._guarded(self.stream_events(call, data, created, first, tokens))
        if not self.asgi:
            # A WSGI server (the in-process test client) cannot stream an async iterator:
            # the events are produced here, in this request's event loop, and sent at once.
            events = [event async for event in events]
        response = StreamingHttpResponse(events, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        response["X-Request-Id"] = call.request_id
        if call.billed:
            # Headers leave before generation: nothing is charged yet (the worst case is
            # held). The final charge is in the last chunk's `usage.cost` / `credits.charged`.
            response["X-Credits-Balance"] = format_usd(
                call.balance_micros() if call.balance_known  # read by begin()
                else await self.run(call.balance_micros))
            response["X-Credits-Charged"] = format_usd(0)
            response["X-Credits-Held"] = format_usd(call.held_micros)
        if call.promotion_applied:
            response["X-Promotion-Applied"] = "true"
        return response

    def opening_choices(self) -> list[dict]:
        return []

    def stream_choice(self, text: str | None, finish_reason: str | None = None) -> dict:
        raise NotImplementedError  # a view that streams says how a choice looks

    async def stream_events(self, call, data, created, first, tokens):
        """The SSE chunks of a stream: opening, one per token, the finish, usage, [DONE]."""
        base = {"id": call.request_id, "object": self.chunk_object, "created": created,
                "model": call.model.id}

        def chunk(choice: dict) -> bytes:
            return _sse({**base, "choices": [choice]})

        if first.__class__ is Relay:
            # Pass-through: the upstream's chunks as it sent them (tool calls, logprobs,
            # refusals, every choice), under this call's id and model.
            yield _relayed(first, base)
            async for piece in tokens:
                yield _relayed(piece, base)
        else:
            # A token's chunk differs from the next only in its text: encode the rest once.
            marker = _json(_PIECE)
            head, found, tail = chunk(self.stream_choice(_PIECE)).partition(marker)

            def token_chunk(piece: str) -> bytes:
                if not found:
                    return chunk(self.stream_choice(piece))
                return head + _json(piece) + tail

            for choice in self.opening_choices():
                yield chunk(choice)
            if first is not None:
                yield token_chunk(first)
                async for piece in tokens:
                    yield token_chunk(piece)
            yield chunk(self.stream_choice(None, call.finish_reason or "stop"))
        if (data.get("stream_options") or {}).get("include_usage"):
            balance = None
            if call.billed:  # known from the settlement, else one query
                balance = (call.balance_micros() if call.balance_known
                           else await self.run(call.balance_micros))
            yield _sse(self.final_usage_chunk(call, base, balance))
        yield DONE

    async def _guarded(self, events):
        try:
            async for event in events:
                yield event
        except InferenceError as exc:
            yield _sse(error_body(exc.message, type=exc.type, code=exc.code, param=exc.param))
        except Exception as exc:
            response = exception_handler(exc, {})
            yield _sse(response.data)

    def final_usage_chunk(self, call, base: dict, balance_micros: int | None) -> dict:
        chunk = {**base, "choices": [], "usage": self.usage(call)}
        if call.billed:
            chunk["credits"] = {"balance": format_usd(balance_micros),
                                "charged": format_usd(call.cost_micros),
                                "promotion_applied": call.promotion_applied}
        return chunk


def _sse(payload) -> bytes:
    return b"data: " + _json(payload) + b"\n\n"


def _json(value) -> bytes:
    """Compact JSON, UTF-8. orjson: a stream encodes a chunk per token, and the standard
    library's encoder was a tenth of a relayed stream's CPU; the standard library for the
    rare value orjson refuses (an integer beyond 64 bits from an upstream)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


_OURS = ("id", "object", "created", "model")


def _relayed(piece: Relay, base: dict) -> bytes:
    """The SSE events of upstream chunks, each under our id, object, created and model."""
    return b"".join(_sse({**base, **{k: v for k, v in chunk.items() if k not in _OURS}})
                    for chunk in piece.chunks)


def passed_through(call: services.MeteredCall, *, object_name: str, created: int,
                   usage: dict) -> dict:
    """A non-streamed upstream answer as it came (choices intact, tool calls, logprobs,
    refusals, system_fingerprint...), under this call's id and model, with our usage."""
    answer = {k: v for k, v in call.response.items() if k not in (*_OURS, "usage")}
    return {"id": call.request_id, "object": object_name, "created": created,
            "model": call.model.id, **answer, "usage": usage}


def usage_json(call: services.MeteredCall) -> dict:
    """See _MeteredView.usage."""
    counts = call.token_counts()
    prompt_tokens = call.charged_prompt_tokens
    completion_tokens = call.completion_tokens
    details = dict(call.usage.details or {}) if call.usage is not None else {}
    details.setdefault("prompt_tokens_details", {"cached_tokens": counts.cached_input})
    details.setdefault("completion_tokens_details", {"reasoning_tokens": counts.reasoning})
    by_class = call.charge_details.by_class if call.charge_details else dict.fromkeys(
        TOKEN_CLASSES, 0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens, **details,
             "cost": format_usd(call.cost_micros),
             "cost_details": {name: format_usd(by_class[name]) for name in TOKEN_CLASSES}}
    usage["prompt_tokens"], usage["completion_tokens"] = prompt_tokens, completion_tokens
    usage["total_tokens"] = prompt_tokens + completion_tokens
    if call.estimated:
        usage["estimated"] = True
    return usage


DONE = b"data: [DONE]\n\n"
_PIECE = "\x00tokenbank-piece\x00"  # stands for a token's text in a pre-encoded chunk


class ChatCompletionsView(_MeteredView):
    """POST /v1/chat/completions (OpenAI's shape; `stream: true` for server-sent events)."""

    serializer_class = ChatCompletionRequestSerializer
    endpoint = "chat.completions"
    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    @extend_schema(request=ChatCompletionRequestSerializer, responses=OpenApiTypes.OBJECT,
                   parameters=[IDEMPOTENCY_HEADER])
    async def post(self, request):
        return await super().post(request)

    def build_prompt(self, data) -> Prompt:
        messages = [{"role": m["role"], "content": m.get("content") or ""}
                    for m in data["messages"]]
        return Prompt(kind="chat", messages=messages)

    def render(self, call, data, created) -> dict:
        if call.response is not None:
            return passed_through(call, object_name="chat.completion", created=created,
                                  usage=self.usage(call))
        return {
            "id": call.request_id, "object": "chat.completion", "created": created,
            "model": call.model.id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": call.text},
                         "logprobs": None, "finish_reason": call.finish_reason}],
            "usage": self.usage(call),
        }

    def stream_choice(self, text: str | None, finish_reason: str | None = None) -> dict:
        delta = {} if text is None else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def opening_choices(self) -> list[dict]:
        return [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}]


class CompletionsView(_MeteredView):
    """POST /v1/completions (legacy text completions)."""

    serializer_class = CompletionRequestSerializer
    endpoint = "completions"
    id_prefix = "cmpl"
    chunk_object = "text_completion"

    @extend_schema(request=CompletionRequestSerializer, responses=OpenApiTypes.OBJECT,
                   parameters=[IDEMPOTENCY_HEADER])
    async def post(self, request):
        return await super().post(request)

    def build_prompt(self, data) -> Prompt:
        return Prompt(kind="completion", text=data["prompt"])

    def render(self, call, data, created) -> dict:
        if call.response is not None:
            return passed_through(call, object_name="text_completion", created=created,
                                  usage=self.usage(call))
        return {
            "id": call.request_id, "object": "text_completion", "created": created,
            "model": call.model.id,
            "choices": [{"text": call.text, "index": 0, "logprobs": None,
                         "finish_reason": call.finish_reason}],
            "usage": self.usage(call),
        }

    def stream_choice(self, text: str | None, finish_reason: str | None = None) -> dict:
        return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}


class InferenceView(_MeteredView):
    """POST /api/inference: {"model", "prompt", "max_tokens"} -> text, usage, cost, credits."""

    serializer_class = InferenceRequestSerializer
    endpoint = "inference"
    id_prefix = "gen"
    answer_reads_database = True  # the promotion's status

    @extend_schema(request=InferenceRequestSerializer, responses=OpenApiTypes.OBJECT,
                   parameters=[IDEMPOTENCY_HEADER])
    async def post(self, request):
        return await super().post(request)

    def build_prompt(self, data) -> Prompt:
        return Prompt(kind="completion", text=data["prompt"])

    def render(self, call, data, created) -> dict:
        body = {
            "id": call.request_id, "model": call.model.id, "text": call.text,
            "finish_reason": call.finish_reason, "usage": self.usage(call),
            "cost": format_usd(call.cost_micros),
        }
        if call.billed:
            body["credits"] = {"balance": format_usd(call.balance_micros()),
                               "charged": format_usd(call.cost_micros),
                               "promotion": call.promotion_json()}
        return body


class EmbeddingsView(_MeteredView):
    """POST /v1/embeddings: OpenAI's shape, metered by input tokens."""

    serializer_class = EmbeddingRequestSerializer
    endpoint = "embeddings"
    id_prefix = "emb"

    @extend_schema(request=EmbeddingRequestSerializer, responses=OpenApiTypes.OBJECT,
                   parameters=[IDEMPOTENCY_HEADER])
    async def post(self, request):
        return await super().post(request)

    def build_prompt(self, data) -> Prompt:
        return Prompt(kind="embedding", inputs=data["input"])

    def render(self, call, data, created) -> dict:
        usage = self.usage(call)
        return {"object": "list", "data": (call.response or {}).get("data", []),
                "model": call.model.id,
                "usage": {"prompt_tokens": usage["prompt_tokens"],
                          "total_tokens": usage["prompt_tokens"], "cost": usage["cost"],
                          "cost_details": usage["cost_details"],
                          **({"estimated": True} if call.estimated else {})}}
