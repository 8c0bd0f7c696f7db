"""The backends on their own: the demo's determinism and token rule, and the
openai_compatible backend against a real HTTP server on loopback."""

import pytest

from inference.backends import Prompt, count_tokens, get_backend
from inference.exceptions import UpstreamError, UpstreamTimeout


def _chat(text: str) -> Prompt:
    return Prompt(kind="chat", messages=[{"role": "user", "content": text}])


def test_token_rule_counts_words_and_each_punctuation_mark():
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("  ") == 0
    assert count_tokens("it's 3.5") == 6


def test_demo_backend_is_deterministic_and_its_pieces_are_single_tokens(settings):
    settings.DEMO_BACKEND_TOKEN_DELAY_MS = 0
    backend = get_backend("demo")
    first = list(backend.generate(model_name="demo-small", prompt=_chat("Tell me a story"),
                                  max_tokens=500))
    again = list(backend.generate(model_name="demo-small", prompt=_chat("Tell me a story"),
                                  max_tokens=500))
    other = list(backend.generate(model_name="demo-small", prompt=_chat("Something else"),
                                  max_tokens=500))
    assert first == again != other
    assert all(count_tokens(piece) == 1 for piece in first)
    assert count_tokens("".join(first)) == len(first)


def test_demo_backend_stops_at_max_tokens_with_finish_reason_length():
    stream = get_backend("demo").generate(model_name="demo-small", prompt=_chat("Hi"),
                                          max_tokens=3)
    assert len(list(stream)) == 3
    assert stream.finish_reason == "length"
    assert stream.usage.completion_tokens == 3


@pytest.mark.django_db
def test_upstream_stream_yields_pieces_and_reports_upstream_usage(upstream, settings):
    stream = get_backend("loopback").generate(model_name="tiny", prompt=_chat("Hi"), max_tokens=7)
    assert "".join(stream) == "Hello from upstream!"
    assert stream.finish_reason == "stop"
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (11, 5)
    sent = upstream.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["authorization"] == "Bearer upstream-secret"
    assert sent["body"]["model"] == "tiny" and sent["body"]["max_tokens"] == 7
    assert sent["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.django_db
def test_upstream_without_usage_leaves_counting_to_us(upstream):
    upstream.mode = "no_usage"
    stream = get_backend("loopback").generate(
        model_name="tiny", prompt=Prompt(kind="completion", text="Hi"), max_tokens=7)
    assert "".join(stream) == "Hello from upstream!"
    assert stream.usage is None
    assert upstream.requests[-1]["path"] == "/v1/completions"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("http_500", UpstreamError, "answered 500: model crashed"),
        ("die_after_two", UpstreamError, "closed the stream early"),
        ("error_event", UpstreamError, "GPU fell over"),
        ("slow", UpstreamTimeout, "timed out"),
    ],
)
def test_upstream_failures_map_to_clear_errors(upstream, mode, error, message):
    upstream.mode = mode
    stream = get_backend("loopback").generate(model_name="tiny", prompt=_chat("Hi"), max_tokens=7)
    with pytest.raises(error, match=message):
        list(stream)


def test_unreachable_upstream_is_an_upstream_error(settings):
    settings.INFERENCE_BACKENDS = {"nowhere": {"ENGINE": "openai_compatible",
                                               "BASE_URL": "http://127.0.0.1:9/v1",
                                               "TIMEOUT_SECONDS": 0.5}}
    stream = get_backend("nowhere").generate(model_name="x", prompt=_chat("Hi"), max_tokens=2)
    with pytest.raises(UpstreamError, match="Could not reach"):
        list(stream)


def test_usage_details_split_the_tokens_into_price_classes_and_cannot_exceed_their_totals():
    from credits.money import TokenCounts
    from inference.backends import Usage

    usage = Usage.from_openai({"prompt_tokens": 100, "completion_tokens": 40,
                               "prompt_tokens_details": {"cached_tokens": 70,
                                                         "cache_write_tokens": 20},
                               "completion_tokens_details": {"reasoning_tokens": 30}})
    assert usage.token_counts() == TokenCounts(input=10, cached_input=70, cache_write=20,
                                               output=10, reasoning=30)
    greedy = Usage.from_openai({"prompt_tokens": 10, "completion_tokens": 5,
                                "prompt_tokens_details": {"cached_tokens": 500},
                                "completion_tokens_details": {"reasoning_tokens": "9"}})
    assert greedy.token_counts() == TokenCounts(input=0, cached_input=10, output=5)


def test_the_upstream_gets_the_request_as_sent_with_our_limit_and_its_model_name():
    from inference.backends import build_payload

    body = {"model": "ours", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "top_k": 3,
            "max_completion_tokens": 50, "stream_options": {"include_usage": False}}
    streamed = build_payload(model_name="theirs", prompt=_chat("hi"), max_tokens=50, body=body,
                             stream=True)
    assert streamed == {**body, "model": "theirs", "stream": True,
                        "stream_options": {"include_usage": True}}
    whole = build_payload(model_name="theirs", prompt=_chat("hi"), max_tokens=4096,
                          body={"model": "ours", "messages": []}, stream=False)
    assert whole == {"model": "theirs", "messages": [], "max_tokens": 4096, "stream": False}
    assert body["model"] == "ours"  # the client's body is not changed


@pytest.mark.django_db
def test_a_streamed_tool_call_is_relayed_whole_with_its_text_counted(upstream):
    from inference.backends import Relay, UpstreamTokenStream

    stream = UpstreamTokenStream(None, "", {"stream": True}, {}, "chat")
    lines = [
        'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}',
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1",'
        '"function":{"name":"get_weather","arguments":""}}]}}]}',
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
        '"function":{"arguments":"{}"}}]}}]}',
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
        'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
    ]
    relays = [r for line in lines for r in stream._line(line)]
    assert all(isinstance(r, Relay) for r in relays)
    assert [str(r) for r in relays] == ["get_weather", "{}", ""]
    assert len(relays[0].chunks) == 2  # the role chunk goes out with the first token
    assert stream.finish_reason == "tool_calls" and stream.usage.completion_tokens == 4


def test_sse_lines_are_split_on_bytes_across_chunk_boundaries():
    import asyncio

    from inference.backends import _lines

    async def chunks():
        for part in (b"data: {\"a\"", b": \"\xc3", b"\xa9\"}\r\n\r", b"\ndata: [DONE]"):
            yield part

    async def read():
        return [line async for line in _lines(chunks())]

    assert asyncio.run(read()) == ['data: {"a": "é"}', "", "data: [DONE]"]


def test_relayed_chunks_keep_what_the_fast_json_path_refuses_and_any_language():
    """Chunks are parsed and re-encoded per token by orjson; an integer beyond 64 bits or a
    NaN (which Python's JSON reads) still goes through, and non-ASCII text stays as sent."""
    import json

    from inference.api import _relayed
    from inference.backends import UpstreamTokenStream

    stream = UpstreamTokenStream(None, "", {"stream": True}, {}, "chat")
    [relay] = stream._line('data: {"id":"up","model":"theirs","seed":123456789012345678901234567890,'
                           '"choices":[{"index":0,"delta":{"content":"héllo 世界"},"logprob":NaN}]}')
    assert str(relay) == "héllo 世界"
    event = _relayed(relay, {"id": "ours", "object": "chat.completion.chunk", "created": 1,
                             "model": "ours-model"})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    sent = json.loads(event[len(b"data: "):])
    assert (sent["id"], sent["model"]) == ("ours", "ours-model")
    assert sent["seed"] == 123456789012345678901234567890
    assert sent["choices"][0]["delta"]["content"] == "héllo 世界"
