"""Idempotency-Key replays of non-streaming calls: the first call with a key runs, a
replay with the same body gets the stored response, a different body is refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from inference.exceptions import IdempotencyKeyReused, InvalidRequest
from inference.models import IdempotentRequest


def body_fingerprint(endpoint: str, body) -> str:
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim_idempotency_key(*, user: User, key: str, endpoint: str,
                          body) -> tuple[IdempotentRequest, bool]:
    """(record, is_replay). A replay with the same body gets the stored response;
    a different body, or the first call still running, raises IdempotencyKeyReused."""
    key = key.strip()
    if not key or len(key) > 200:
        raise InvalidRequest("The Idempotency-Key header must be 1 to 200 characters.",
                             param="Idempotency-Key")
    fingerprint = body_fingerprint(endpoint, body)
    try:
        with transaction.atomic():
            record = IdempotentRequest.objects.create(
                user=user, key=key, endpoint=endpoint, body_hash=fingerprint)
        return record, False
    except IntegrityError:
        record = IdempotentRequest.objects.filter(user=user, key=key).first()
    if record is None:  # forgotten meanwhile: the other call failed; try again
        return claim_idempotency_key(user=user, key=key, endpoint=endpoint, body=body)
    abandoned_before = timezone.now() - dt.timedelta(seconds=settings.STALE_HOLD_SECONDS)
    if record.status_code is None and record.created_at < abandoned_before:
        # Its call died without an answer (its hold is released by the same rule): start over.
        forget_idempotency_key(record=record)
        return claim_idempotency_key(user=user, key=key, endpoint=endpoint, body=body)
    if record.body_hash != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key")
    if record.status_code is None:
        raise IdempotencyKeyReused(
            "A request with this Idempotency-Key is still being processed.",
            param="Idempotency-Key", code="idempotency_request_in_progress")
    return record, True


def store_idempotent_response(*, record: IdempotentRequest, status_code: int, body: dict,
                              headers: dict) -> None:
    """Keep the answer of a keyed call, so a replay with the same body gets it verbatim."""
    record.status_code, record.response_body, record.response_headers = status_code, body, headers
    record.save(update_fields=["status_code", "response_body", "response_headers"])


def purge_idempotency_records(*, now: dt.datetime | None = None) -> int:
    """Forget stored responses older than IDEMPOTENCY_KEY_TTL_HOURS (a key may then be
    reused, as with OpenAI's and Stripe's 24 hours). Returns how many were removed."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    removed, _ = IdempotentRequest.objects.filter(created_at__lt=cutoff).delete()
    return removed


def forget_idempotency_key(*, record: IdempotentRequest) -> None:
    """The call failed: free the key so the client can retry it."""
    IdempotentRequest.objects.filter(pk=record.pk, status_code__isnull=True).delete()
