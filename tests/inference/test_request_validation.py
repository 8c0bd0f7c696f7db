"""Request validation reuses one serializer per class and thread (inference.serializers.
validated_request): nothing of one request may show in the next, on any thread."""

import threading

import pytest
from rest_framework.exceptions import ValidationError

from inference.serializers import (
    ChatCompletionRequestSerializer,
    _per_thread,
    validated_request,
)


def chat(**fields) -> dict:
    return {"model": "demo-small", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_the_thread_keeps_no_request_once_validated():
    validated_request(ChatCompletionRequestSerializer, chat(user="someone-private"))
    with pytest.raises(ValidationError):
        validated_request(ChatCompletionRequestSerializer, chat(max_tokens="5"))

    kept = _per_thread.serializers[ChatCompletionRequestSerializer].__dict__
    assert not {"initial_data", "_validated_data", "_errors", "_data"} & set(kept)


def test_a_refused_request_leaves_nothing_for_the_next():
    with pytest.raises(ValidationError) as refused:
        validated_request(ChatCompletionRequestSerializer, chat(max_tokens="5"))
    assert "max_tokens" in refused.value.detail

    data = validated_request(ChatCompletionRequestSerializer, chat(max_tokens=5))

    assert data["max_tokens"] == 5


def test_fields_of_one_request_do_not_carry_into_the_next():
    first = validated_request(ChatCompletionRequestSerializer, chat(
        stream=True, stream_options={"include_usage": True}, temperature=0.5,
        max_completion_tokens=7))
    second = validated_request(ChatCompletionRequestSerializer, {
        "model": "other", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "and you?"}]})

    assert first["stream_options"] == {"include_usage": True} and first["max_tokens"] == 7
    assert second["model"] == "other" and second["stream"] is False
    assert "stream_options" not in second and "temperature" not in second
    assert second.get("max_tokens") is None
    assert [m["content"] for m in second["messages"]] == ["be brief", "and you?"]
    assert first["model"] == "demo-small"  # the first result is not overwritten


def test_threads_validating_at_once_each_get_their_own_request():
    wrong = []

    def validate_many(n: int) -> None:
        for i in range(200):
            tokens = n * 1000 + i + 1
            try:
                data = validated_request(ChatCompletionRequestSerializer,
                                         chat(max_tokens=tokens, user=f"thread-{n}"))
            except Exception as exc:  # a thread's failure must fail the test
                wrong.append((n, i, repr(exc)))
                continue
            if (data["max_tokens"], data["user"]) != (tokens, f"thread-{n}"):
                wrong.append((n, i, data["max_tokens"], data["user"]))

    threads = [threading.Thread(target=validate_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert wrong == []
