"""Request shapes of the OpenAI-compatible endpoints. Unknown fields are ignored (as the
OpenAI SDK may send newer ones); known fields typed wrong are a 400 naming the parameter:
the strict fields of accounts.fields, as OpenAI does not coerce "5" to 5 or "yes" to true."""

import threading

from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from accounts.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictFloatField,
    StrictIntegerField,
)

ROLES = ("system", "developer", "user", "assistant", "tool")


@extend_schema_field({"oneOf": [
    {"type": "string"},
    {"type": "array", "items": {"type": "object", "properties": {
        "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}},
], "nullable": True})
class ContentField(serializers.Field):
    """A message's content: a string, a list of {"type": "text", "text": ...} parts, or null."""

    def to_internal_value(self, data) -> str:
        if data is None:
            return ""
        if isinstance(data, str):
            return data
        if isinstance(data, list):
            texts = []
            for part in data:
                if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                    raise serializers.ValidationError("Content parts must be objects with text.")
                if part.get("type") not in ("text", "input_text"):
                    raise serializers.ValidationError(
                        f"Content parts of type {part.get('type')!r} are not supported.")
                texts.append(part.get("text", ""))
            return "".join(texts)
        raise serializers.ValidationError("Content must be a string or a list of text parts.")

    def to_representation(self, value):
        return value


class MessageSerializer(serializers.Serializer):
    role = StrictChoiceField(choices=ROLES)
    content = ContentField(required=False, allow_null=True, default="")
    name = StrictCharField(required=False, max_length=64)


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


@extend_schema_field({"oneOf": [{"type": "string"},
                                {"type": "array", "items": {"type": "string"}, "maxItems": 4}],
                      "nullable": True})
class StopField(serializers.Field):
    def to_internal_value(self, data):
        if data is None or isinstance(data, str):
            return data
        if isinstance(data, list) and len(data) <= 4 and all(isinstance(s, str) for s in data):
            return data
        raise serializers.ValidationError("stop must be a string or a list of up to 4 strings.")

    def to_representation(self, value):
        return value


INVALID_TOOL_CHOICE = "Invalid value for 'tool_choice': "  # OpenAI's words


@extend_schema_field({"oneOf": [
    {"type": "string", "enum": ["none", "auto", "required"]},
    {"type": "object", "required": ["type"], "properties": {
        "type": {"type": "string"},
        "function": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}}}}},
], "nullable": True})
class ToolChoiceField(serializers.Field):
    """OpenAI's tool_choice: "none", "auto", "required", or an object with a `type`; a
    function choice must name its function. Object types we do not know (newer ones) go to
    the upstream as sent."""

    MODES = ("none", "auto", "required")

    def to_internal_value(self, data):
        if isinstance(data, str):
            if data in self.MODES:
                return data
            raise serializers.ValidationError(
                f"{INVALID_TOOL_CHOICE}expected 'none', 'auto', 'required' or an object; "
                f"got {data[:40]!r}.")
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise serializers.ValidationError(
                f"{INVALID_TOOL_CHOICE}expected 'none', 'auto', 'required' or an object "
                "with a type.")
        function = data.get("function")
        if data["type"] == "function" and not (
                isinstance(function, dict) and isinstance(function.get("name"), str)
                and function["name"]):
            raise serializers.ValidationError(
                f"{INVALID_TOOL_CHOICE}a function choice names its function: "
                '{"type": "function", "function": {"name": "..."}}.')
        return data

    def to_representation(self, value):
        return value


def _check_tool_choice(attrs: dict) -> None:
    """What OpenAI refuses: a tool_choice that requires a tool when no tools are given, or
    that names a function the tools do not define."""
    choice, tools = attrs.get("tool_choice"), attrs.get("tools") or []
    if (choice == "required" or isinstance(choice, dict)) and not tools:
        raise serializers.ValidationError(
            {"tool_choice": f"{INVALID_TOOL_CHOICE}'tool_choice' is only allowed when "
                            "'tools' are specified."})
    if isinstance(choice, dict) and choice["type"] == "function":
        name = choice["function"]["name"]
        defined = {tool["function"].get("name") for tool in tools
                   if isinstance(tool.get("function"), dict)}
        if name not in defined:
            raise serializers.ValidationError(
                {"tool_choice": f"{INVALID_TOOL_CHOICE}the function {name!r} is not among "
                                "the tools."})


class _GenerationOptions(serializers.Serializer):
    model = StrictCharField(max_length=100)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    # n > 1 goes to upstreams that serve it; the demo backend refuses it by name.
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=128)
    stop = StopField(required=False, allow_null=True)
    seed = StrictIntegerField(required=False, allow_null=True)
    presence_penalty = StrictFloatField(required=False, allow_null=True,
                                              min_value=-2, max_value=2)
    frequency_penalty = StrictFloatField(required=False, allow_null=True,
                                               min_value=-2, max_value=2)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)


class _PassThroughFields(serializers.Serializer):
    """OpenAI's request fields we do not act on but pass to the upstream as sent (the raw
    body goes through, unknown fields included); declared here so their types are checked
    and the schema documents them. A backend that cannot serve one refuses it by name."""

    tools = serializers.ListField(child=serializers.DictField(), required=False,
                                  allow_null=True)
    tool_choice = ToolChoiceField(required=False, allow_null=True)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)
    functions = serializers.ListField(child=serializers.DictField(), required=False,
                                      allow_null=True)
    function_call = serializers.JSONField(required=False, allow_null=True)
    response_format = serializers.DictField(required=False, allow_null=True)
    logit_bias = serializers.DictField(child=StrictFloatField(min_value=-100,
                                                                    max_value=100),
                                       required=False, allow_null=True)
    metadata = serializers.DictField(child=StrictCharField(max_length=512),
                                     required=False, allow_null=True)
    reasoning_effort = StrictCharField(required=False, allow_null=True, max_length=32)


class ChatPassThroughFields(_PassThroughFields):
    logprobs = StrictBooleanField(required=False, allow_null=True)
    top_logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0,
                                            max_value=20)


class CompletionPassThroughFields(serializers.Serializer):
    logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0,
                                        max_value=5)
    echo = StrictBooleanField(required=False, allow_null=True)
    best_of = StrictIntegerField(required=False, allow_null=True, min_value=1,
                                       max_value=20)
    suffix = StrictCharField(required=False, allow_null=True, allow_blank=True)
    logit_bias = serializers.DictField(child=StrictFloatField(min_value=-100,
                                                                    max_value=100),
                                       required=False, allow_null=True)


# Real requests for the API reference (/api/docs/), instead of "model": "string".
@extend_schema_serializer(examples=[
    OpenApiExample("One reply", request_only=True, value={
        "model": "demo-small", "max_tokens": 128,
        "messages": [{"role": "user", "content": "Write a haiku about counting tokens."}]}),
    OpenApiExample("Streamed, with usage", request_only=True, value={
        "model": "demo-small", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Answer in one sentence."},
                     {"role": "user", "content": "What is a token?"}]}),
])
class ChatCompletionRequestSerializer(ChatPassThroughFields, _GenerationOptions):
    messages = MessageSerializer(many=True, allow_empty=False)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)

    def validate(self, attrs):
        if attrs.get("max_tokens") is None and attrs.get("max_completion_tokens") is not None:
            attrs["max_tokens"] = attrs["max_completion_tokens"]
        _check_tool_choice(attrs)
        return attrs


@extend_schema_field({"oneOf": [{"type": "string"},
                                {"type": "array", "items": {"type": "string"}, "maxItems": 1}]})
class PromptField(serializers.Field):
    """A completion prompt: a string or a list holding one string."""

    def to_internal_value(self, data) -> str:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], str):
            return data[0]
        raise serializers.ValidationError("prompt must be a string (or a list of one string).")

    def to_representation(self, value):
        return value


@extend_schema_serializer(examples=[OpenApiExample("Complete a line", request_only=True, value={
    "model": "demo-small", "prompt": "The ledger balanced because", "max_tokens": 32})])
class CompletionRequestSerializer(CompletionPassThroughFields, _GenerationOptions):
    prompt = PromptField()
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1, default=16)


@extend_schema_serializer(examples=[OpenApiExample("A prompt", request_only=True, value={
    "model": "demo-small", "prompt": "Say hello in French.", "max_tokens": 16})])
class InferenceRequestSerializer(serializers.Serializer):
    """POST /api/inference: the simple, non-OpenAI endpoint."""

    model = StrictCharField(max_length=100)
    prompt = StrictCharField(allow_blank=False, trim_whitespace=False)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)


@extend_schema_field({"oneOf": [
    {"type": "string"},
    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2048},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1},
    {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
     "minItems": 1, "maxItems": 2048},
]})
class EmbeddingInputField(serializers.Field):
    """OpenAI's embedding input: a string, a list of strings, a token array or a list of
    token arrays; always a list of items inside."""

    def to_internal_value(self, data) -> list:
        if isinstance(data, str):
            return [data]
        if isinstance(data, list) and 0 < len(data) <= 2048:
            if all(isinstance(item, str) for item in data):
                return data
            if all(_token_id(item) for item in data):
                return [data]
            if all(isinstance(item, list) and item and all(_token_id(t) for t in item)
                   for item in data):
                return data
        raise serializers.ValidationError(
            "input must be a string, a list of strings, a token array (integers) or a list "
            "of token arrays, not empty, up to 2048 items.")

    def to_representation(self, value):
        return value


def _token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class EmbeddingRequestSerializer(serializers.Serializer):
    """POST /v1/embeddings."""

    model = StrictCharField(max_length=100)
    input = EmbeddingInputField()
    encoding_format = StrictChoiceField(choices=["float", "base64"], required=False,
                                              allow_null=True)
    dimensions = StrictIntegerField(required=False, allow_null=True, min_value=1,
                                          max_value=8192)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)


_per_thread = threading.local()


def validated_request(serializer_class: type[serializers.Serializer], data) -> dict:
    """What `serializer_class(data=data).is_valid(raise_exception=True)` validates, with one
    instance per class and thread, validated again for each request: a new serializer
    deep-copies its few dozen fields, ten times the cost of the validation itself, on every
    call. Validation keeps no state between requests but the results reset here."""
    instances = _per_thread.__dict__.setdefault("serializers", {})
    serializer = instances.get(serializer_class)
    if serializer is None:
        serializer = instances[serializer_class] = serializer_class(data=data)
    else:
        serializer.initial_data = data
    try:
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data
    finally:  # the thread keeps no request (prompts are customers' data)
        for held in ("initial_data", "_validated_data", "_errors", "_data"):
            serializer.__dict__.pop(held, None)
