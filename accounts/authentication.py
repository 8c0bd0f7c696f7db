"""`Authorization: Bearer sk-...` for DRF. The key is found by its SHA-256 (see
accounts.services.get_user_for_api_key); request.auth is the ApiKey."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from accounts.services import get_user_for_api_key, touch_api_key
from config.observability import context


class ApiKeyAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None  # not ours: let session authentication try
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: use 'Bearer sk-...'.", code="invalid_api_key")
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(
                "Incorrect API key provided.", code="invalid_api_key") from None
        api_key = get_user_for_api_key(secret)
        if api_key is None or not api_key.user.is_active:
            raise exceptions.AuthenticationFailed(
                "Incorrect or revoked API key provided.", code="invalid_api_key")
        touch_api_key(api_key=api_key)
        context.bind(user_id=api_key.user_id, key_id=api_key.pk)  # the request's log lines say whose
        return api_key.user, api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the bearer key in the OpenAPI schema (/api/schema/)."""

    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "sk-..."}
