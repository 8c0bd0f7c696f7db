"""The API's one error contract: OpenAI's envelope
{"error": {"message", "type", "param", "code"}} for every failure under /v1 and /api.

`exception_handler` is REST_FRAMEWORK["EXCEPTION_HANDLER"]; `api_not_found` answers
unknown URLs under /v1 and /api (instead of Django's HTML 404 page).
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response

from accounts.rest import with_request_id
from credits import exceptions as credit_errors
from inference.exceptions import InferenceError, InsufficientCreditsForCall

logger = logging.getLogger(__name__)


def error_body(message: str, *, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None, **extra) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


def _with_buy_link(message: str, context) -> str:
    """A 402's message ends with where to buy credits, as an address a developer can open."""
    request = (context or {}).get("request")
    url = reverse("billing:buy")
    return f"{message} Buy credits at {request.build_absolute_uri(url) if request else url}"


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation detail as {"messages.0.role": ["..."]}."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name if key != "non_field_errors" else prefix))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return {prefix: [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix: [str(detail)]}


def _validation_response(exc: drf.ValidationError) -> Response:
    fields = {k: v for k, v in _flatten(exc.detail).items() if v}
    if not fields:
        return Response(error_body("Invalid request."), status=400)
    param = next(iter(fields))
    message = "; ".join(
        f"{name}: {' '.join(msgs)}" if name else " ".join(msgs) for name, msgs in fields.items()
    )
    return Response(
        error_body(message, code="invalid_request", param=param or None,
                   fields={k or "non_field_errors": v for k, v in fields.items()}),
        status=400,
    )


# What exception_handler answers as the API's own refusal (anything else, it logs as a bug).
_REFUSALS = (InferenceError, credit_errors.CreditError, drf.APIException, RequestDataTooBig,
             SuspiciousOperation, Http404, DjangoPermissionDenied)


def is_refusal(exc: BaseException) -> bool:
    return isinstance(exc, _REFUSALS)


def exception_handler(exc, context) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, InsufficientCreditsForCall):
        body = error_body(_with_buy_link(exc.message, context), type=exc.type, code=exc.code,
                          param=exc.param, affordable_tokens=exc.affordable_tokens)
        return Response(body, status=exc.status)
    if isinstance(exc, InferenceError):
        message = _with_buy_link(exc.message, context) if exc.status == 402 else exc.message
        return Response(error_body(message, type=exc.type, code=exc.code, param=exc.param),
                        status=exc.status)
    if isinstance(exc, credit_errors.InsufficientCredits):
        return Response(error_body(_with_buy_link(str(exc), context), type="insufficient_credits",
                                   code="insufficient_credits"), status=402)
    if isinstance(exc, credit_errors.IdempotencyConflict):
        return Response(error_body(str(exc), code=exc.code), status=409)
    if isinstance(exc, credit_errors.CreditError):
        return Response(error_body(str(exc), code=exc.code), status=400)
    if isinstance(exc, drf.ValidationError):
        return _validation_response(exc)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("The request body is too large.", code="request_too_large"),
                        status=413)
    if isinstance(exc, SuspiciousOperation):
        return Response(error_body("The request was refused as malformed.",
                                   code="bad_request"), status=400)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, drf.APIException):
        status = exc.status_code
        message = str(exc.detail) if not isinstance(exc.detail, dict | list) else str(exc)
        type_, code = "invalid_request_error", exc.get_codes()
        if isinstance(exc, drf.ParseError):
            message = f"We could not parse the JSON body of your request. ({exc.detail})"
            code = "invalid_json"
        elif isinstance(exc, drf.NotAuthenticated):
            message = ("You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'.")
            type_, code = "authentication_error", "missing_api_key"
        elif isinstance(exc, drf.AuthenticationFailed):
            type_ = "authentication_error"
            code = "invalid_api_key"
        elif isinstance(exc, drf.Throttled):
            type_, code = "rate_limit_error", "rate_limit_exceeded"
            wait = int(exc.wait or 60)
            # The throttle names what it limited (accounts.throttles.RateLimited): a sign-up
            # over its per-address limit is not told about an API key it does not have.
            limited = getattr(exc, "limited", "this API key")
            message = f"Rate limit reached for {limited}. Try again in {wait} seconds."
            headers["Retry-After"] = str(wait)
        elif isinstance(exc, drf.PermissionDenied):
            type_ = "permission_error"
        elif isinstance(exc, drf.NotFound):
            code = "not_found"
        elif isinstance(exc, drf.MethodNotAllowed):
            code = "method_not_allowed"
        if isinstance(code, dict | list):
            code = None
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        if getattr(exc, "wait", None) and "Retry-After" not in headers:
            headers["Retry-After"] = str(int(exc.wait))
        return Response(error_body(message, type=type_, code=code), status=status,
                        headers=headers)
    logger.exception("Unhandled error in the API", exc_info=exc)
    return Response(error_body("The server had an error while processing your request.",
                               type="server_error", code="internal_error"), status=500)


# Exempt: an unknown URL answers 404 to any method, never Django's HTML CSRF page (a bearer
# client sends no CSRF token; nothing here reads a session or changes anything).
@csrf_exempt
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    return with_request_id(JsonResponse(
        error_body(f"Unknown URL: {request.method} {request.path}", code="not_found"), status=404
    ))


def api_server_error(request, *args, **kwargs) -> JsonResponse:
    return with_request_id(JsonResponse(
        error_body("The server had an error while processing your request.",
                   type="server_error", code="internal_error"), status=500
    ))
