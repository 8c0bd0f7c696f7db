"""The base of every JSON API view (accounts, credits, inference): JSON in, JSON out."""

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView


class AlwaysJsonNegotiation(DefaultContentNegotiation):
    """Answer JSON (or the SSE stream the body asked for) whatever `Accept` says, as
    OpenAI does: SSE clients often send only `Accept: text/event-stream`."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class JsonAPIView(APIView):
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]
    content_negotiation_class = AlwaysJsonNegotiation
