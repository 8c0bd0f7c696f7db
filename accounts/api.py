"""JSON doors of the accounts app: registration, the credit summary, API keys.

Included by config/urls.py under /api/ (URL names: api-register, api-credits,
api-keys, api-key-detail).
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.models import ApiKey
from accounts.serializers import (
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    EntrySerializer,
    GrantSerializer,
    RegisterSerializer,
)
from credits import abuse
from credits.money import format_usd
from credits.selectors import get_user_credits, promotion_status
from inference.ratelimit import RegistrationRateThrottle


class JsonAPIView(APIView):
    renderer_classes = [JSONRenderer]


class RegisterView(JsonAPIView):
    """POST /api/auth/register: a new account and its first API key (shown this once)."""

    authentication_classes = []  # no session, so no CSRF: the body is the credential
    permission_classes = [AllowAny]
    throttle_classes = [RegistrationRateThrottle]

    @extend_schema(request=RegisterSerializer, responses={201: OpenApiTypes.OBJECT})
    def post(self, request):
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            user, key, secret = services.register_user(
                **serializer.validated_data, client_ip=abuse.client_ip(request))
        except DjangoValidationError as exc:
            raise exceptions.ValidationError(exc.message_dict) from None
        return Response(
            {
                "user": {"id": user.pk, "email": user.email},
                "api_key": secret,  # shown this once
                "api_key_info": {"id": key.pk, "name": key.name, "masked": key.masked},
                "promotion": promotion_status(user).as_json(),
            },
            status=status.HTTP_201_CREATED,
        )


class EntryPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class CreditsView(JsonAPIView):
    """GET /api/credits: balance, available, held, grants, the promotion, latest entries."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        credits = get_user_credits(user=request.user)
        paginator = EntryPagination()
        page = paginator.paginate_queryset(credits.history.order_by("-created_at", "-id"),
                                           request, view=self)
        entries = paginator.get_paginated_response(EntrySerializer(page, many=True).data).data
        return Response({
            "balance": format_usd(credits.balance_micros),
            "available": format_usd(credits.available_micros),
            "held": format_usd(credits.held_micros),
            "currency": "USD",
            "grants": GrantSerializer(credits.grants, many=True).data,
            "promotion": credits.promotion.as_json(),
            "entries": entries,
        })


class ApiKeyListView(JsonAPIView):
    """GET /api/keys: the user's keys (never the secrets). POST: a new key, secret shown once."""

    @extend_schema(responses=ApiKeySerializer(many=True))
    def get(self, request):
        keys = ApiKey.objects.filter(user=request.user)
        return Response({"data": ApiKeySerializer(keys, many=True).data})

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: OpenApiTypes.OBJECT})
    def post(self, request):
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, secret = services.create_api_key(user=request.user,
                                              name=serializer.validated_data["name"])
        return Response({**ApiKeySerializer(key).data, "key": secret},
                        status=status.HTTP_201_CREATED)


class ApiKeyDetailView(JsonAPIView):
    """DELETE /api/keys/<id>: revoke the key at once."""

    @extend_schema(responses=ApiKeySerializer)
    def delete(self, request, pk: int):
        key = ApiKey.objects.filter(pk=pk, user=request.user).first()
        if key is None:
            raise exceptions.NotFound("No such API key.")
        services.revoke_api_key(api_key=key, user=request.user)
        return Response(ApiKeySerializer(key).data)


urlpatterns = [
    path("auth/register", RegisterView.as_view(), name="api-register"),
    path("credits", CreditsView.as_view(), name="api-credits"),
    path("keys", ApiKeyListView.as_view(), name="api-keys"),
    path("keys/<int:pk>", ApiKeyDetailView.as_view(), name="api-key-detail"),
]
