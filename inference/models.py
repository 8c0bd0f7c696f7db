import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class AiModelQuerySet(models.QuerySet):
    def active(self):
        return self.filter(active=True)


class AiModel(models.Model):
    """A model customers can call, by its public id (`demo-small`).

    `backend` names an entry of settings.INFERENCE_BACKENDS (how to reach it);
    prices live in ModelPrice, so a price change is a new row, never an edit.
    """

    id = models.CharField(max_length=100, primary_key=True, help_text="Public id, e.g. demo-small.")
    display_name = models.CharField(max_length=100, blank=True)
    backend = models.CharField(
        max_length=50, default="demo", help_text="A key of settings.INFERENCE_BACKENDS."
    )
    upstream_model = models.CharField(
        max_length=200, blank=True, help_text="The model name the backend knows (empty: the id)."
    )
    max_output_tokens = models.PositiveIntegerField(default=4096)
    context_length = models.PositiveIntegerField(default=8192)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AiModelQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        verbose_name = "AI model"
        constraints = [
            models.CheckConstraint(
                condition=Q(max_output_tokens__gt=0) & Q(context_length__gt=0),
                name="aimodel_limits_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.id

    def price_at(self, moment=None) -> "ModelPrice | None":
        """The price in effect at `moment` (now by default), or None: not callable."""
        moment = moment or timezone.now()
        return self.prices.filter(effective_from__lte=moment).order_by("-effective_from").first()


class ModelPrice(models.Model):
    """A model's price from `effective_from` until the next row's. Append-only by habit:
    to change a price, add a row. A call is charged at the price in effect when it starts."""

    model = models.ForeignKey(AiModel, on_delete=models.CASCADE, related_name="prices")
    input_price_per_million_micros = models.BigIntegerField(
        help_text="Micro-dollars per million prompt tokens."
    )
    output_price_per_million_micros = models.BigIntegerField(
        help_text="Micro-dollars per million completion tokens."
    )
    effective_from = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_id", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="modelprice_one_per_moment"
            ),
            models.CheckConstraint(
                condition=Q(input_price_per_million_micros__gte=0)
                & Q(output_price_per_million_micros__gte=0),
                name="modelprice_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d %H:%M}"


class UsageStatus(models.TextChoices):
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED", "Client disconnected"
    UPSTREAM_ERROR = "UPSTREAM_ERROR", "Upstream error"
    PROMOTION_NOT_GRANTED = "PROMOTION_NOT_GRANTED", "Promotion not granted"
    TIME_LIMIT = "TIME_LIMIT", "Stopped at the stream time limit"
    FAILED = "FAILED", "Failed"
    # The call died without settling; the stale-hold sweep charged what its journal says
    # was delivered and wrote this record (inference.services.record_swept_calls).
    SWEPT = "SWEPT", "Settled by the stale-hold sweep"


class UsageRecord(models.Model):
    """One metered call, written once when it settles. Copies the prices it was charged at."""

    request_id = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="usage_records"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model = models.ForeignKey(AiModel, on_delete=models.PROTECT, related_name="usage_records")
    endpoint = models.CharField(max_length=40)
    hold_id = models.UUIDField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    input_price_per_million_micros = models.BigIntegerField()
    output_price_per_million_micros = models.BigIntegerField()
    cost_micros = models.BigIntegerField(default=0)
    held_micros = models.BigIntegerField(default=0)
    streamed = models.BooleanField(default=False)
    status = models.CharField(max_length=24, choices=UsageStatus.choices)
    finish_reason = models.CharField(max_length=20, blank=True)
    error = models.CharField(max_length=255, blank=True)
    promotion_applied = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["user", "-started_at"], name="usage_user_recent_idx")]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.status})"


class IdempotentRequest(models.Model):
    """The stored response of a non-streaming call made with an Idempotency-Key header.

    No status_code: the call is running (or died). A status_code and a response: replays
    get the response. A status_code without one: the call was answered, and charged,
    but its copy was lost; replays are refused, never run again.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=40)
    body_hash = models.CharField(max_length=64)
    # The call's request id: the reference of its hold and ledger entries.
    request_id = models.CharField(max_length=64, blank=True, default="")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    # Serialized JSON in a text column: PostgreSQL's json/jsonb refuse "\u0000", which an
    # answer may hold (its ASCII escape is stored, so any string fits).
    response_json = models.TextField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotent_request_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.endpoint})"
