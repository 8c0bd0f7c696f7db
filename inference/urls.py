"""The inference API's routes; config/urls.py mounts `v1_urlpatterns` at /v1/ and
`api_urlpatterns` at /api/."""

from django.urls import path

from inference import api

v1_urlpatterns = [
    path("models", api.ModelListView.as_view(), name="v1-models"),
    path("chat/completions", api.ChatCompletionsView.as_view(), name="v1-chat-completions"),
    path("completions", api.CompletionsView.as_view(), name="v1-completions"),
    path("embeddings", api.EmbeddingsView.as_view(), name="v1-embeddings"),
]

api_urlpatterns = [
    path("inference", api.InferenceView.as_view(), name="api-inference"),
]
