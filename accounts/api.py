"""JSON doors of the accounts app: the user's API keys.

Included by config/urls.py under /api/ (URL names: api-keys, api-key-detail).
"""

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response

from accounts import services
from accounts.models import ApiKey
from accounts.rest import JsonAPIView
from accounts.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeyListSerializer,
    ApiKeySerializer,
)


class ApiKeyListView(JsonAPIView):
    """GET /api/keys: the user's keys (never the secrets). POST: a new key, secret shown once."""

    @extend_schema(responses=ApiKeyListSerializer)
    def get(self, request):
        keys = ApiKey.objects.filter(user=request.user)
        return Response({"data": ApiKeySerializer(keys, many=True).data})

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def post(self, request):
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, secret = services.create_api_key(user=request.user,
                                              name=serializer.validated_data["name"])
        return Response({**ApiKeySerializer(key).data, "key": secret},
                        status=status.HTTP_201_CREATED)


class ApiKeyDetailView(JsonAPIView):
    """DELETE /api/keys/<id>: revoke the key at once."""

    @extend_schema(responses={200: ApiKeySerializer})
    def delete(self, request, pk: int):
        key = ApiKey.objects.filter(pk=pk, user=request.user).first()
        if key is None:
            raise exceptions.NotFound("No such API key.")
        services.revoke_api_key(api_key=key, user=request.user)
        return Response(ApiKeySerializer(key).data)


urlpatterns = [
    path("keys", ApiKeyListView.as_view(), name="api-keys"),
    path("keys/<int:pk>", ApiKeyDetailView.as_view(), name="api-key-detail"),
]
