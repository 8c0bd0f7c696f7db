"""JSON doors that show credit: the sign-up (with the promotion it starts) and the credit
summary. Included by config/urls.py under /api/ (URL names: api-register, api-credits).
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from accounts import services as account_services
from accounts.network import client_ip
from accounts.rest import JsonAPIView
from accounts.serializers import RegisterSerializer
from accounts.throttles import REGISTRATION_LIMITED, RateLimited, RegistrationRateThrottle
from credits.money import format_usd
from credits.promotion.status import promotion_status
from credits.selectors import get_user_credits
from credits.serializers import EntrySerializer, GrantSerializer


class RegisterView(JsonAPIView):
    """POST /api/auth/register: a new account and its first API key (shown this once)."""

    authentication_classes = []  # no session, so no CSRF: the body is the credential
    permission_classes = [AllowAny]
    throttle_classes = [RegistrationRateThrottle]

    def throttled(self, request, wait):
        raise RateLimited(wait, limited=REGISTRATION_LIMITED)

    @extend_schema(request=RegisterSerializer, responses={201: OpenApiTypes.OBJECT})
    def post(self, request):
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            user, key, secret = account_services.register_user(
                **serializer.validated_data, client_ip=client_ip(request))
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


urlpatterns = [
    path("auth/register", RegisterView.as_view(), name="api-register"),
    path("credits", CreditsView.as_view(), name="api-credits"),
]
