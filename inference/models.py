import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from credits.money import TokenPrices


class AiModelQuerySet(models.QuerySet):
    def active(self):
        return self.filter(active=True)


class ModelKind(models.TextChoices):
    CHAT = "chat", "Chat and text completions"
    EMBEDDING = "embedding", "Embeddings"


class AiModel(models.Model):
    """A model customers can call, by its public id (`demo-small`).

    How a call reaches it: its active deployments (upstreams, tried in order, see
    Deployment) when it has any, else `backend`, an entry of settings.INFERENCE_BACKENDS
    (the built-in demo). Prices live in ModelPrice, so a price change is a new row,
    never an edit.
    """

    id = models.CharField(max_length=100, primary_key=True, help_text="Public id, e.g. demo-small.")
    display_name = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=20, choices=ModelKind.choices, default=ModelKind.CHAT,
                            help_text="Which endpoints serve it: /v1/chat/completions and "
                                      "/v1/completions, or /v1/embeddings.")
    backend = models.CharField(
        max_length=50, default="demo",
        help_text="A key of settings.INFERENCE_BACKENDS; used when the model has no deployments."
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
    # The other token classes; empty: the class costs what its parent class costs (cached
    # input and cache writes the input price, reasoning the output price).
    cached_input_price_per_million_micros = models.BigIntegerField(
        null=True, blank=True,
        help_text="Micro-dollars per million prompt tokens read from the upstream's cache "
                  "(empty: the input price).")
    cache_write_price_per_million_micros = models.BigIntegerField(
        null=True, blank=True,
        help_text="Micro-dollars per million prompt tokens written to the upstream's cache "
                  "(empty: the input price).")
    reasoning_price_per_million_micros = models.BigIntegerField(
        null=True, blank=True,
        help_text="Micro-dollars per million reasoning tokens (empty: the output price).")
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
            models.CheckConstraint(
                condition=(Q(cached_input_price_per_million_micros__isnull=True)
                           | Q(cached_input_price_per_million_micros__gte=0))
                & (Q(cache_write_price_per_million_micros__isnull=True)
                   | Q(cache_write_price_per_million_micros__gte=0))
                & (Q(reasoning_price_per_million_micros__isnull=True)
                   | Q(reasoning_price_per_million_micros__gte=0)),
                name="modelprice_classes_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d %H:%M}"

    def token_prices(self) -> TokenPrices:
        """Every token class's price, the defaults resolved."""
        return TokenPrices(
            input=self.input_price_per_million_micros,
            cached_input=_or(self.cached_input_price_per_million_micros,
                             self.input_price_per_million_micros),
            cache_write=_or(self.cache_write_price_per_million_micros,
                            self.input_price_per_million_micros),
            output=self.output_price_per_million_micros,
            reasoning=_or(self.reasoning_price_per_million_micros,
                          self.output_price_per_million_micros),
        )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


class Upstream(models.Model):
    """An OpenAI-compatible server models are deployed on (vLLM, Ollama, OpenAI, ...).

    The API key is a secret: the admin takes it write-only, and neither `str()`, `repr()`
    nor any log line shows it. `from_settings` (the seeded "default" upstream) follows
    UPSTREAM_BASE_URL, UPSTREAM_API_KEY and UPSTREAM_TIMEOUT_SECONDS instead of its columns.
    """

    name = models.SlugField(max_length=64, unique=True)
    base_url = models.URLField(max_length=500, blank=True,
                               help_text="Up to the version, e.g. https://api.openai.com/v1")
    api_key = models.CharField(max_length=500, blank=True)
    connect_timeout_seconds = models.FloatField(default=5.0)
    read_timeout_seconds = models.FloatField(
        default=60.0, help_text="Longest wait for the next bytes: the first token of a stream, "
                                "the whole answer of a non-streamed call.")
    from_settings = models.BooleanField(
        default=False, help_text="Use UPSTREAM_BASE_URL / UPSTREAM_API_KEY / "
                                 "UPSTREAM_TIMEOUT_SECONDS from the environment.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(connect_timeout_seconds__gt=0) & Q(read_timeout_seconds__gt=0),
                name="upstream_timeouts_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # never the key
        return f"<Upstream {self.name}>"

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key)


class Deployment(models.Model):
    """One place a model is served: an upstream and the name the upstream knows it by.

    A call tries a model's active deployments by `position` (lowest first); deployments
    sharing a position are one tier, ordered per call by weighted chance (`weight`; 0 never
    goes first). A connect error, a 5xx or a 429 before the first token moves on to the
    next deployment; nothing moves on once tokens were delivered.
    """

    model = models.ForeignKey(AiModel, on_delete=models.CASCADE, related_name="deployments")
    upstream = models.ForeignKey(Upstream, on_delete=models.PROTECT, related_name="deployments")
    upstream_model = models.CharField(
        max_length=200, blank=True, help_text="The model's name on the upstream (empty: the "
                                              "model's upstream name, else its id).")
    position = models.PositiveSmallIntegerField(default=0, help_text="Lower is tried first.")
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of first attempts among deployments of the same position.")
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["model_id", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["model", "upstream", "upstream_model"],
                                    name="deployment_unique_target"),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} on {self.upstream.name}"


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
    # Parts of the two above, as the upstream reported them (OpenAI's usage details).
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    input_price_per_million_micros = models.BigIntegerField()
    output_price_per_million_micros = models.BigIntegerField()
    # The class prices charged (defaults resolved), copied like the two above.
    cached_input_price_per_million_micros = models.BigIntegerField(null=True, blank=True)
    cache_write_price_per_million_micros = models.BigIntegerField(null=True, blank=True)
    reasoning_price_per_million_micros = models.BigIntegerField(null=True, blank=True)
    cost_micros = models.BigIntegerField(default=0)
    # The upstream sent no usage: the tokens (and the charge) are our counter's.
    estimated = models.BooleanField(default=False)
    # Which upstream served the call, and every attempt made (fallbacks), in order:
    # [{"upstream", "model", "outcome", "status", "error", "ms"}].
    upstream = models.CharField(max_length=64, blank=True)
    attempts = models.JSONField(default=list, blank=True)
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
