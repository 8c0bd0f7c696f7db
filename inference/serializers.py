"""Request shapes of the OpenAI-compatible endpoints. Unknown fields are ignored (as the
OpenAI SDK may send newer ones); known fields typed wrong are a 400."""

from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

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
    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField(required=False, allow_null=True, default="")
    name = serializers.CharField(required=False, max_length=64)


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False, default=False)


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


class _GenerationOptions(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    stop = StopField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True)
    presence_penalty = serializers.FloatField(required=False, allow_null=True,
                                              min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True,
                                               min_value=-2, max_value=2)
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)


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
class ChatCompletionRequestSerializer(_GenerationOptions):
    messages = MessageSerializer(many=True, allow_empty=False)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)

    def validate(self, attrs):
        if attrs.get("max_tokens") is None and attrs.get("max_completion_tokens") is not None:
            attrs["max_tokens"] = attrs["max_completion_tokens"]
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
class CompletionRequestSerializer(_GenerationOptions):
    prompt = PromptField()
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, default=16)


@extend_schema_serializer(examples=[OpenApiExample("A prompt", request_only=True, value={
    "model": "demo-small", "prompt": "Say hello in French.", "max_tokens": 16})])
class InferenceRequestSerializer(serializers.Serializer):
    """POST /api/inference: the simple, non-OpenAI endpoint."""

    model = serializers.CharField(max_length=100)
    prompt = serializers.CharField(allow_blank=False, trim_whitespace=False)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
