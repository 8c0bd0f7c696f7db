"""The base of every JSON API view (accounts, credits, inference): JSON in, JSON out."""

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView


class AlwaysJsonNegotiation(DefaultContentNegotiation):
    """Answer JSON (or the SSE stream the body asked for) whatever `Accept` says, as
    OpenAI does: SSE clients often send only `Accept: text/event-stream`."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class JsonAPIView(APIView):
    """JSON out; JSON in through the API-wide parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES:
    accounts.parsers.JSONParser, which refuses hostile JSON with a 400)."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = AlwaysJsonNegotiation
