"""Idempotency-Key replays of non-streaming calls: the first call with a key runs, a
replay with the same body gets the stored response, a different body is refused. A
call that was charged is never run again under its key."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from credits.selectors import call_charge, call_heard_at
from inference.exceptions import IdempotencyKeyReused, InvalidRequest
from inference.models import IdempotentRequest

logger = logging.getLogger(__name__)


def body_fingerprint(endpoint: str, body) -> str:
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    """What a replay answers: the first call's status, body and headers."""

    status_code: int
    body: dict
    headers: dict


def claim_idempotency_key(*, user: User, key: str, endpoint: str, body,
                          request_id: str) -> tuple[IdempotentRequest, StoredResponse | None]:
    """(record, replay). The first call with a key claims it (replay is None) for the call
    `request_id`; a replay with the same body gets the stored response. Raises
    IdempotencyKeyReused (409) for a different body, while the first call is still
    running, and when the first call was charged but its response was lost: such a
    call is never run (and charged) again."""
    key = key.strip()
    if not key or len(key) > 200:
        raise InvalidRequest("The Idempotency-Key header must be 1 to 200 characters.",
                             param="Idempotency-Key")
    fingerprint = body_fingerprint(endpoint, body)
    try:
        with transaction.atomic():
            record = IdempotentRequest.objects.create(
                user=user, key=key, endpoint=endpoint, body_hash=fingerprint,
                request_id=request_id)
        return record, None
    except IntegrityError:
        record = IdempotentRequest.objects.filter(user=user, key=key).first()
    if record is None:  # forgotten meanwhile: the other call failed; try again
        return claim_idempotency_key(user=user, key=key, endpoint=endpoint, body=body,
                                     request_id=request_id)
    abandoned_before = timezone.now() - dt.timedelta(seconds=settings.STALE_HOLD_SECONDS)
    running = record.status_code is None
    if running and record.created_at < abandoned_before and not _still_heard(
            record, abandoned_before):
        charge = call_charge(request_id=record.request_id) if record.request_id else None
        if charge is None or charge.user_id != record.user_id:
            # Its call died unanswered (the sweep settles its hold by the same rule): start over.
            forget_idempotency_key(record=record)
            return claim_idempotency_key(user=user, key=key, endpoint=endpoint, body=body,
                                         request_id=request_id)
        running = False  # charged, then nothing could write the key: its answer is lost
    if record.body_hash != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key")
    if running:
        raise IdempotencyKeyReused(
            "A request with this Idempotency-Key is still being processed.",
            param="Idempotency-Key", code="idempotency_request_in_progress")
    if record.response_json is None:
        raise IdempotencyKeyReused(
            "The request made with this Idempotency-Key was answered and charged, but its "
            "response could not be kept for replay. It will not be run or charged again; "
            "send a new Idempotency-Key to make a new request.",
            param="Idempotency-Key", code="idempotency_response_unavailable")
    return record, StoredResponse(status_code=record.status_code,
                                  body=json.loads(record.response_json),
                                  headers=record.response_headers)


def _still_heard(record: IdempotentRequest, abandoned_before: dt.datetime) -> bool:
    """The key's call is alive: its hold's journal moved within STALE_HOLD_SECONDS (the
    stale-hold sweep's own rule), however long ago the call began."""
    heard = call_heard_at(request_id=record.request_id) if record.request_id else None
    return heard is not None and heard >= abandoned_before


def store_idempotent_response(*, record: IdempotentRequest, status_code: int, body: dict,
                              headers: dict) -> bool:
    """Keep the answer of a keyed call, so a replay with the same body gets it verbatim.

    Never raises: the call is charged by now and its client must still get the answer.
    The body is kept as JSON text escaped to ASCII, so no string in it can be refused;
    if the write fails anyway, the key is kept by `refuse_replays`. Returns whether the
    response was stored."""
    try:
        record.status_code, record.response_headers = status_code, headers
        record.response_json = json.dumps(body)  # ensure_ascii: "\u0000" stays an escape
        with transaction.atomic():  # a savepoint: a failure leaves the transaction usable
            record.save(update_fields=["status_code", "response_json", "response_headers"])
    except Exception:
        logger.exception("Idempotency-Key %s: the response of charged call %s was not stored",
                         record.pk, record.request_id)
        refuse_replays(record=record, status_code=status_code)
        return False
    return True


def refuse_replays(*, record: IdempotentRequest, status_code: int) -> None:
    """The call was answered, and charged, but its response cannot be replayed: keep the
    key with no response, so a retry is refused (409) instead of run and charged again.

    Never raises. Should this write fail too, the key stays "still being processed",
    and once stale the ledger's charge for `record.request_id` keeps it refused."""
    record.status_code, record.response_json = status_code, None  # none was ever written
    try:
        with transaction.atomic():
            record.save(update_fields=["status_code"])
    except Exception:
        logger.exception("Idempotency-Key %s of charged call %s could not be closed",
                         record.pk, record.request_id)


def purge_idempotency_records(*, now: dt.datetime | None = None) -> int:
    """Forget stored responses older than IDEMPOTENCY_KEY_TTL_HOURS (a key may then be
    reused, as with OpenAI's and Stripe's 24 hours). Returns how many were removed."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    removed, _ = IdempotentRequest.objects.filter(created_at__lt=cutoff).delete()
    return removed


def forget_idempotency_key(*, record: IdempotentRequest) -> None:
    """The call failed before any charge: free the key so the client can retry it."""
    IdempotentRequest.objects.filter(pk=record.pk, status_code__isnull=True).delete()
