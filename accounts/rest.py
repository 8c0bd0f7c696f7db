"""The base of every JSON API view (accounts, credits, inference): JSON in, JSON out, and an
`X-Request-Id` on every answer, errors included."""

import uuid

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
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


class JsonAPIView(APIView):
    """JSON out; JSON in through the API-wide parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES:
    accounts.parsers.JSONParser, which refuses hostile JSON with a 400)."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = AlwaysJsonNegotiation

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
