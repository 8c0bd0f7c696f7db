"""OpenAI fidelity with the official `openai` SDK against the live (ASGI) server, whose model
routes to fake OpenAI-compatible upstreams: requests go through whole, answers come back
whole (tool calls, JSON mode, logprobs, n choices, refusals), every token class is charged at
its price, and deployments fall back before the first token, never after."""

import base64
import datetime as dt
import json
import socket
import struct

import openai
import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.services import create_api_key
from credits.money import TokenCounts, TokenPrices, call_cost, format_usd
from inference.backends import demo_embedding
from inference.models import AiModel, Deployment, ModelPrice, Upstream, UsageRecord, UsageStatus
from inference.routing import forget_routes
from tests.books import assert_books_balance
from tests.inference.fake_openai import USAGE, FakeOpenAI, answer_for, stream_for
from tests.seeds import seed_upstreams_and_embeddings

PRICES = TokenPrices(input=2_000_000, cached_input=500_000, cache_write=2_500_000,
                     output=8_000_000, reasoning=16_000_000)
# USAGE: 1000 prompt tokens of which 600 cached; 300 completion tokens of which 200 reasoning.
USAGE_COST = call_cost(tokens=TokenCounts(input=400, cached_input=600, output=100, reasoning=200),
                       prices=PRICES)
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@pytest.fixture(scope="session")
def fake_servers():
    servers = FakeOpenAI(), FakeOpenAI()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def fakes(fake_servers):
    for server in fake_servers:
        server.behaviour = "ok"
        server.requests.clear()
    return fake_servers


@pytest.fixture
def routed(fakes, transactional_db):
    """gpt-fake on two upstreams: primary first, secondary as fallback."""
    primary, secondary = fakes
    model = AiModel.objects.create(id="gpt-fake", max_output_tokens=4096, context_length=100_000)
    ModelPrice.objects.create(
        model=model, input_price_per_million_micros=PRICES.input,
        cached_input_price_per_million_micros=PRICES.cached_input,
        cache_write_price_per_million_micros=PRICES.cache_write,
        output_price_per_million_micros=PRICES.output,
        reasoning_price_per_million_micros=PRICES.reasoning,
        effective_from=timezone.now() - dt.timedelta(days=1))
    for position, (name, server) in enumerate((("primary", primary), ("secondary", secondary))):
        upstream = Upstream.objects.create(name=name, base_url=server.url, api_key=f"sk-{name}",
                                           connect_timeout_seconds=1, read_timeout_seconds=5)
        Deployment.objects.create(model=model, upstream=upstream, upstream_model=f"{name}-4o",
                                  position=position)
    return model


@pytest.fixture
def customer(make_user, fund, sdk):
    user = make_user(first_token_at=timezone.now(), promotion_eligible=False)
    fund(user, 5)
    return user, sdk(create_api_key(user=user, name="sdk")[1])


def _balance(user) -> int:
    user.refresh_from_db()
    return user.credit_balance


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- pass-through -----------------------------------------------------------------------


@pytest.mark.parametrize("ask", [
    {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False},
    # A tool_choice type newer than our checks goes through as sent.
    {"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}},
    {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}}}}},
    {"response_format": {"type": "json_object"}},
    {"logprobs": True, "top_logprobs": 1},
    {"n": 2, "seed": 7, "stop": ["\n\n"], "presence_penalty": 0.5, "frequency_penalty": 0.1,
     "logit_bias": {"50256": -100}, "user": "u-1", "metadata": {"team": "a"},
     "reasoning_effort": "low"},
], ids=["tools", "newer_tool_choice", "json_schema", "json_object", "logprobs", "n2_and_knobs"])
def test_the_client_gets_the_upstreams_choices_whole_and_each_token_class_is_charged(
        routed, customer, fakes, ask):
    user, client = customer
    before = _balance(user)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=ASK, max_completion_tokens=500, **ask,
        extra_body={"top_k": 40, "repetition_penalty": 1.05})
    completion = raw.parse()
    sent = fakes[0].requests[-1]
    # Every field went through as sent, unknown ones too; the model is the upstream's name.
    for name, value in {**ask, "top_k": 40, "repetition_penalty": 1.05, "messages": ASK,
                        "max_completion_tokens": 500}.items():
        assert sent["body"][name] == value, name
    assert sent["body"]["model"] == "primary-4o" and sent["body"]["stream"] is False
    assert sent["authorization"] == "Bearer sk-primary"
    # The answer's choices are the upstream's, byte for byte after JSON.
    body = json.loads(raw.http_response.text)
    expected = answer_for(sent["body"])
    assert body["choices"] == expected["choices"]
    assert body["system_fingerprint"] == "fp_fake"
    assert (body["id"], body["model"]) == (completion.id, "gpt-fake")
    if "tools" in ask:
        call = completion.choices[0].message.tool_calls[0]
        assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
            "call_W7x", "get_weather", {"city": "Paris"})
        assert completion.choices[0].finish_reason == "tool_calls"
    if "n" in ask:
        assert [c.message.content for c in completion.choices] == [
            "Choice 0 says hi", "Choice 1 says hi"]
    if "logprobs" in ask:
        assert completion.choices[0].logprobs.content[0].top_logprobs[0].token == "Choice"
    # usage: the upstream's, details and all, with what each class cost.
    usage = body["usage"]
    assert usage["prompt_tokens_details"] == USAGE["prompt_tokens_details"]
    assert usage["completion_tokens_details"] == USAGE["completion_tokens_details"]
    assert usage["cost"] == format_usd(USAGE_COST.total_micros) == "0.005100"
    assert usage["cost_details"] == {name: format_usd(v)
                                     for name, v in USAGE_COST.by_class.items()}
    assert "estimated" not in usage
    record = UsageRecord.objects.get(request_id=completion.id)
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens,
            record.reasoning_tokens, record.estimated) == (1000, 600, 300, 200, False)
    assert record.cost_micros == USAGE_COST.total_micros
    assert (record.reasoning_price_per_million_micros, record.upstream) == (16_000_000, "primary")
    assert before - _balance(user) == USAGE_COST.total_micros
    assert_books_balance(user.pk)


@pytest.mark.parametrize("ask", [
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"n": 2, "logprobs": True, "top_logprobs": 1},
], ids=["tool_call_deltas", "n2_logprobs"])
def test_streamed_chunks_are_the_upstreams_and_the_usage_chunk_carries_the_cost(
        routed, customer, fakes, ask):
    user, client = customer
    before = _balance(user)
    chunks = list(client.chat.completions.create(
        model="gpt-fake", messages=ASK, max_tokens=500, stream=True,
        stream_options={"include_usage": True}, **ask))
    sent = fakes[0].requests[-1]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    relayed = [c.model_dump(mode="json", exclude_unset=True)["choices"] for c in chunks[:-1]]
    assert relayed == [c["choices"] for c in stream_for(sent)]
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "gpt-fake"
    if "tools" in ask:
        arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                            for c in chunks[:-1] if c.choices[0].delta.tool_calls)
        assert json.loads(arguments) == {"city": "Paris"}
        assert chunks[-2].choices[0].finish_reason == "tool_calls"
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens_details.reasoning_tokens == 200
    assert final.usage.prompt_tokens_details.cached_tokens == 600
    assert final.usage.model_extra["cost"] == format_usd(USAGE_COST.total_micros)
    record = UsageRecord.objects.get(request_id=chunks[0].id)
    assert record.streamed and record.cost_micros == USAGE_COST.total_micros
    assert before - _balance(user) == USAGE_COST.total_micros
    assert_books_balance(user.pk)


def test_a_refusal_comes_back_as_a_refusal(routed, customer):
    _user, client = customer
    completion = client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "something forbidden"}])
    message = completion.choices[0].message
    assert (message.content, message.refusal) == (None, "I can't help with that.")


def test_without_upstream_usage_the_charge_is_estimated_never_zero(routed, customer, fakes):
    user, client = customer
    fakes[0].behaviour = "no_usage"
    before = _balance(user)
    chunks = list(client.chat.completions.create(
        model="gpt-fake", messages=ASK, max_tokens=50, stream=True,
        stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage.model_extra["estimated"] is True
    record = UsageRecord.objects.get(request_id=chunks[0].id)
    assert record.estimated and record.completion_tokens == 4  # "Choice 0 says hi"
    expected = call_cost(tokens=TokenCounts(input=record.prompt_tokens, output=4), prices=PRICES)
    assert record.cost_micros == expected.total_micros > 0
    assert before - _balance(user) == expected.total_micros
    completion = client.chat.completions.create(model="gpt-fake", messages=ASK, max_tokens=50)
    assert UsageRecord.objects.get(request_id=completion.id).estimated
    assert completion.usage.model_extra["estimated"] is True


def test_the_demo_backend_refuses_what_it_cannot_serve_by_name(customer):
    _user, client = customer
    for ask, field in (({"tools": TOOLS}, "tools"), ({"n": 2}, "n"),
                       ({"response_format": {"type": "json_object"}}, "response_format"),
                       ({"logprobs": True}, "logprobs")):
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="demo-small", messages=ASK, **ask)
        assert exc.value.body["param"] == field
        assert field in exc.value.message and "demo-small" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="demo-small", prompt="Hi", echo=True)
    assert exc.value.body["param"] == "echo"
    assert not UsageRecord.objects.exists()


# --- fallback ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["refuse_503", "refuse_429", "connection_refused"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_before_the_first_token_falls_back_and_charges_once(
        routed, customer, fakes, failure, stream):
    user, client = customer
    primary, secondary = fakes
    if failure == "connection_refused":
        Upstream.objects.filter(name="primary").update(
            base_url=f"http://127.0.0.1:{_dead_port()}/v1")
        forget_routes()  # an update() sends no signal
    else:
        primary.behaviour = failure
    before = _balance(user)
    fallbacks = _fallbacks_counted()
    if stream:
        chunks = list(client.chat.completions.create(
            model="gpt-fake", messages=ASK, max_tokens=500, stream=True,
            stream_options={"include_usage": True}))
        request_id = chunks[0].id
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Choice 0 says hi")
    else:
        completion = client.chat.completions.create(model="gpt-fake", messages=ASK,
                                                    max_tokens=500)
        request_id = completion.id
        assert completion.choices[0].message.content == "Choice 0 says hi"
    assert secondary.requests[-1]["body"]["model"] == "secondary-4o"
    record = UsageRecord.objects.get()
    assert record.request_id == request_id and record.upstream == "secondary"
    assert [(a["upstream"], a["outcome"]) for a in record.attempts] == [
        ("primary", "unavailable"), ("secondary", "served")]
    if failure != "connection_refused":
        assert record.attempts[0]["status"] == int(failure[-3:])
    assert record.cost_micros == USAGE_COST.total_micros
    assert before - _balance(user) == USAGE_COST.total_micros
    assert_books_balance(user.pk)
    assert _fallbacks_counted() == fallbacks + 1  # /metrics: left primary, recovered


def _fallbacks_counted() -> float:
    return REGISTRY.get_sample_value("tokenbank_upstream_fallbacks_total",
                                     {"upstream": "primary", "outcome": "recovered"}) or 0.0


def test_an_upstream_dying_after_tokens_ends_the_stream_with_an_error_and_no_fallback(
        routed, customer, fakes):
    user, client = customer
    primary, secondary = fakes
    primary.behaviour = "die_after_tokens"
    before = _balance(user)
    received = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in client.chat.completions.create(model="gpt-fake", messages=ASK,
                                                    max_tokens=500, stream=True):
            received.append(chunk)
    assert "closed the stream early" in exc.value.message
    assert "".join(c.choices[0].delta.content or "" for c in received) == "Choice 0"
    assert secondary.requests == []
    record = UsageRecord.objects.get()
    assert record.status == UsageStatus.UPSTREAM_ERROR and record.estimated
    assert [(a["upstream"], a["outcome"]) for a in record.attempts] == [("primary", "failed")]
    # The two delivered tokens, by our counter, at the output price: charged, once.
    expected = call_cost(tokens=TokenCounts(input=record.prompt_tokens, output=2), prices=PRICES)
    assert record.completion_tokens == 2 and record.cost_micros == expected.total_micros
    assert before - _balance(user) == expected.total_micros
    assert_books_balance(user.pk)


def test_when_every_deployment_is_down_the_call_fails_uncharged(routed, customer, fakes):
    user, client = customer
    for server in fakes:
        server.behaviour = "refuse_503"
    before = _balance(user)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="gpt-fake", messages=ASK, max_tokens=50)
    assert exc.value.status_code == 502 and "overloaded" in exc.value.message
    record = UsageRecord.objects.get()
    assert record.cost_micros == 0 and [a["outcome"] for a in record.attempts] == [
        "unavailable", "unavailable"]
    assert _balance(user) == before


# --- embeddings ---------------------------------------------------------------------------


@pytest.fixture
def embed_model(transactional_db):
    seed_upstreams_and_embeddings()


def test_embeddings_in_openais_shape_deterministic_and_charged_by_input_tokens(
        customer, embed_model):
    user, client = customer
    before = _balance(user)
    floats = client.embeddings.create(model="demo-embed", input=["Hello, world!", "ledger"],
                                      encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == pytest.approx(demo_embedding("Hello, world!", 64))
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 5
    # The SDK asks for base64 by default and decodes it: the same vectors.
    again = client.embeddings.create(model="demo-embed", input=["Hello, world!", "ledger"])
    assert again.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
    tokens = client.embeddings.create(model="demo-embed", input=[[1, 2, 3], [4]],
                                      encoding_format="float", dimensions=8)
    assert tokens.usage.prompt_tokens == 4 and len(tokens.data[0].embedding) == 8
    records = UsageRecord.objects.filter(endpoint="embeddings").order_by("started_at")
    assert [r.prompt_tokens for r in records] == [5, 5, 4]
    assert [r.cost_micros for r in records] == [1, 1, 1]  # 5 x $0.02/M, rounded up once
    assert before - _balance(user) == 3
    assert floats.usage.model_extra["cost"] == "0.000001"
    assert_books_balance(user.pk)


def test_embedding_requests_in_base64_are_float32_little_endian(customer, embed_model,
                                                                 live_server):
    import httpx

    secret = create_api_key(user=customer[0], name="raw")[1]
    response = httpx.post(f"{live_server.url}/v1/embeddings",
                          headers={"Authorization": f"Bearer {secret}"},
                          json={"model": "demo-embed", "input": "ledger",
                                "encoding_format": "base64"})
    assert response.status_code == 200
    body = response.json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack("<64f", raw)) == pytest.approx(demo_embedding("ledger", 64),
                                                              abs=1e-6)
    assert body["object"] == "list" and body["model"] == "demo-embed"


def test_embeddings_refuse_chat_models_and_chat_refuses_embedding_models(customer, embed_model):
    _user, client = customer
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="demo-small", input="hi")
    assert exc.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo-embed", messages=ASK)
    for bad in ([], [[]], [1, "a"], 5, [True]):
        with pytest.raises(openai.BadRequestError) as exc:
            client.embeddings.create(model="demo-embed", input=bad, encoding_format="float")
        assert exc.value.body["param"] == "input"


def test_embeddings_go_through_a_deployed_upstream(routed, customer, fakes):
    _user, client = customer
    AiModel.objects.filter(id="gpt-fake").update(kind="embedding")
    forget_routes()
    result = client.embeddings.create(model="gpt-fake", input=["a", "b"], encoding_format="float")
    assert [d.embedding for d in result.data] == [[0.5, -0.5, 0.0], [0.5, -0.5, 1.0]]
    assert fakes[0].requests[-1]["path"] == "/v1/embeddings"
    assert fakes[0].requests[-1]["body"] == {"model": "primary-4o", "input": ["a", "b"],
                                             "encoding_format": "float"}
    record = UsageRecord.objects.get()
    assert record.prompt_tokens == 2 and record.cost_micros == 4  # 2 x $2/M
    assert record.upstream == "primary"
