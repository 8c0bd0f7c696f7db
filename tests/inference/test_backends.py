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


@pytest.mark.django_db
def test_async_upstream_stream_yields_the_same_pieces_and_usage_as_the_sync_one(upstream):
    import asyncio

    async def read():
        stream = get_backend("loopback").agenerate(model_name="tiny", prompt=_chat("Hi"),
                                                   max_tokens=7)
        return [piece async for piece in stream], stream

    pieces, stream = asyncio.run(read())
    assert "".join(pieces) == "Hello from upstream!"
    assert stream.finish_reason == "stop"
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (11, 5)


def test_sse_lines_are_split_on_bytes_across_chunk_boundaries():
    import asyncio

    from inference.backends import _lines

    class Chunked:
        async def aiter_bytes(self):
            for part in (b"data: {\"a\"", b": \"\xc3", b"\xa9\"}\r\n\r", b"\ndata: [DONE]"):
                yield part

    async def read():
        return [line async for line in _lines(Chunked())]

    assert asyncio.run(read()) == ['data: {"a": "é"}', "", "data: [DONE]"]
