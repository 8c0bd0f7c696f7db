"""The base of every JSON API view (accounts, credits, inference): JSON in, JSON out, and an
`X-Request-Id` on every answer, errors included."""

import uuid

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.throttles import finish_rate_limited


class AlwaysJsonNegotiation(DefaultContentNegotiation):
    """Answer JSON (or the SSE stream the body asked for) whatever `Accept` says, as
    OpenAI does: SSE clients often send only `Accept: text/event-stream`."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def with_request_id(response):
    """Every API answer names itself, as OpenAI's do: a metered call's id when the view set
    one, else a fresh `req-...` (401s, 404s, reads), so a support question can point at it."""
    if not response.has_header("X-Request-Id"):
        response["X-Request-Id"] = f"req-{uuid.uuid4().hex}"
    return response


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    """OpenAI's error envelope, as inference.errors writes it (some errors add fields)."""

    error = ErrorDetailSerializer()


# Documented on every operation (the schema says what the server does: see the schemathesis
# test); "default" covers the rarer ones (403, 405, 409, 413, 415, 5xx), same envelope.
ERROR_RESPONSES = {
    "400": "Invalid request: a field is missing or typed wrong (`param` names it).",
    "401": "No API key, or an invalid or revoked one.",
    "402": "Not enough credit for the call's worst case (metered calls).",
    "404": "Unknown URL, object or model.",
    "429": "Rate limit reached (see the Retry-After header).",
    "default": "Any other error, in the same envelope.",
}
STREAM_DESCRIPTION = ("With `\"stream\": true`: server-sent events, one `data: {chunk}` per "
                      "event, ending with `data: [DONE]`.")


class ApiAutoSchema(AutoSchema):
    """drf-spectacular's schema plus what every operation can answer: the error envelope for
    ERROR_RESPONSES, and `text/event-stream` beside JSON where the view streams
    (`chunk_object`, the OpenAI endpoints with `stream`)."""

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code, description in ERROR_RESPONSES.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=description), code,
                    direction=direction)
        if getattr(self.view, "chunk_object", "") and "200" in responses:
            # OpenAPI 3.0: the schema of a text/event-stream is the schema of one event.
            responses["200"].setdefault("content", {})["text/event-stream"] = {"schema": {
                "type": "object", "description": STREAM_DESCRIPTION, "required": ["data"],
                "properties": {
                    "data": {"type": "string", "description": (
                        "One JSON chunk (`chat.completion.chunk` or `text_completion`; the "
                        "last may carry `usage`, or an `error` object), or `[DONE]`.")},
                    "event": {"type": "string"}, "id": {"type": "string"}}}}
        return responses


class JsonAPIView(APIView):
    """JSON out; JSON in through the API-wide parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES:
    accounts.parsers.JSONParser, which refuses hostile JSON with a 400)."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = AlwaysJsonNegotiation
    schema = ApiAutoSchema()

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        return with_request_id(finish_rate_limited(request, response))


class JsonErrors:
    """For views that answer in another format when they succeed (the schema's YAML, the docs
    page's HTML): their errors (401, 405) still come as JSON in the envelope."""

    def finalize_response(self, request, response, *args, **kwargs):
        if isinstance(response, Response) and response.status_code >= 400:
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return with_request_id(super().finalize_response(request, response, *args, **kwargs))


class SchemaView(JsonErrors, SpectacularAPIView):
    """/api/schema/: the OpenAPI document (YAML, or JSON by Accept or ?format=json)."""


class DocsView(JsonErrors, SpectacularSwaggerSplitView):
    """/api/docs/: Swagger UI over /api/schema/."""
