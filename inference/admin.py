"""Models, their price history and usage records in the credit console.

A price change is a new ModelPrice row with its `effective_from`; existing rows
are never edited or deleted (a call copies the price in effect when it starts,
so history must stay what it was). Usage records are read-only, with CSV.

Upstreams (servers models are deployed on) take their API key write-only: the form never
shows it, a blank field keeps it, and the list says only whether one is set.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.utils import timezone

from credits import money
from credits.admin.toolkit import ExportableHistoryAdmin, UserIdFilter, money_column, usd_exact
from inference.models import AiModel, Deployment, ModelPrice, Upstream, UsageRecord

# A new price may start a little before "now" (the form was opened a moment ago),
# never further back: calls already made keep the price they started at.
BACKDATE_TOLERANCE = dt.timedelta(minutes=10)


class PriceForm(forms.ModelForm):
    """Prices typed as USD per million tokens, stored as integer micro-dollars."""

    input_usd = forms.DecimalField(max_digits=14, decimal_places=6, min_value=Decimal(0),
                                   label="Input USD per 1M tokens")
    output_usd = forms.DecimalField(max_digits=14, decimal_places=6, min_value=Decimal(0),
                                    label="Output USD per 1M tokens")
    cached_input_usd = forms.DecimalField(
        max_digits=14, decimal_places=6, min_value=Decimal(0), required=False,
        label="Cached input USD per 1M tokens", help_text="Empty: the input price.")
    cache_write_usd = forms.DecimalField(
        max_digits=14, decimal_places=6, min_value=Decimal(0), required=False,
        label="Cache write USD per 1M tokens", help_text="Empty: the input price.")
    reasoning_usd = forms.DecimalField(
        max_digits=14, decimal_places=6, min_value=Decimal(0), required=False,
        label="Reasoning USD per 1M tokens", help_text="Empty: the output price.")

    class Meta:
        model = ModelPrice
        fields = ["input_usd", "output_usd", "cached_input_usd", "cache_write_usd",
                  "reasoning_usd", "effective_from", "note"]

    def clean_effective_from(self):
        value = self.cleaned_data["effective_from"]
        if value < timezone.now() - BACKDATE_TOLERANCE:
            raise forms.ValidationError(
                "A new price cannot start in the past; calls already made keep their price.")
        return value

    def clean(self):
        cleaned = super().clean()
        for field, target in (("input_usd", "input_price_per_million_micros"),
                              ("output_usd", "output_price_per_million_micros")):
            if cleaned.get(field) is not None:
                setattr(self.instance, target, money.usd_to_micros(cleaned[field]))
        for field, target in CLASS_PRICE_FIELDS:
            value = cleaned.get(field)
            setattr(self.instance, target, None if value is None else money.usd_to_micros(value))
        return cleaned


CLASS_PRICE_FIELDS = (("cached_input_usd", "cached_input_price_per_million_micros"),
                      ("cache_write_usd", "cache_write_price_per_million_micros"),
                      ("reasoning_usd", "reasoning_price_per_million_micros"))


def class_price_column(field: str, description: str, default: str):
    """A token class's price, or what it defaults to when empty."""
    @admin.display(description=description)
    def column(modeladmin, obj) -> str:
        value = getattr(obj, field)
        return f"= {default}" if value is None else usd_exact(value)
    return column


class PriceInline(admin.TabularInline):
    """The price history: add a row to change a price; existing rows are read-only."""

    model = ModelPrice
    form = PriceForm
    extra = 0
    can_delete = False
    ordering = ["-effective_from"]
    fields = ["input_usd", "output_usd", "cached_input_usd", "cache_write_usd", "reasoning_usd",
              "effective_from", "note", "created_at"]
    readonly_fields = ["created_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    # Existing rows are shown read-only through these (same names as the form's fields).
    input_usd = money_column("input_price_per_million_micros", "Input USD per 1M tokens",
                             exact=True)
    output_usd = money_column("output_price_per_million_micros", "Output USD per 1M tokens",
                              exact=True)
    cached_input_usd = class_price_column("cached_input_price_per_million_micros",
                                          "Cached input USD per 1M tokens", "input")
    cache_write_usd = class_price_column("cache_write_price_per_million_micros",
                                         "Cache write USD per 1M tokens", "input")
    reasoning_usd = class_price_column("reasoning_price_per_million_micros",
                                       "Reasoning USD per 1M tokens", "output")


class DeploymentInline(admin.TabularInline):
    """Where the model is served, tried by position (lowest first; weights share a tier)."""

    model = Deployment
    extra = 0
    fields = ["position", "upstream", "upstream_model", "weight", "active"]
    ordering = ["position", "id"]


@admin.register(AiModel)
class AiModelAdmin(admin.ModelAdmin):
    list_display = ["id", "display_name", "kind", "served_by", "active", "current_input_price",
                    "current_output_price", "next_price_change"]
    list_filter = ["active", "kind", "backend"]
    search_fields = ["id", "display_name", "upstream_model"]
    inlines = [DeploymentInline, PriceInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deployments__upstream")

    def get_readonly_fields(self, request, obj=None):
        # The kind is the endpoint clients call it on: fixed once created.
        return ["id", "kind", "created_at"] if obj is not None else ["created_at"]

    @admin.display(description="served by")
    def served_by(self, obj):
        deployed = [f"{d.upstream.name}:{d.upstream_model or obj.upstream_name}"
                    for d in obj.deployments.all() if d.active]
        return " → ".join(deployed) if deployed else f"{obj.backend} (backend)"

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # usage records point at it: deactivate instead

    @admin.display(description="input / 1M now")
    def current_input_price(self, obj):
        price = obj.price_at()
        return usd_exact(price.input_price_per_million_micros) if price else "not priced"

    @admin.display(description="output / 1M now")
    def current_output_price(self, obj):
        price = obj.price_at()
        return usd_exact(price.output_price_per_million_micros) if price else "not priced"

    @admin.display(description="next change")
    def next_price_change(self, obj):
        upcoming = obj.prices.filter(effective_from__gt=timezone.now()).order_by(
            "effective_from").first()
        return upcoming.effective_from.isoformat(timespec="minutes") if upcoming else "—"


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """The full price history; add a row to change a price."""

    form = PriceForm
    list_display = ["model", "effective_from", "input_price", "output_price", "note",
                    "created_at"]
    list_filter = ["model", ("effective_from", admin.DateFieldListFilter)]
    list_select_related = ["model"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["model", "input_usd", "output_usd", "cached_input_usd", "cache_write_usd",
                    "reasoning_usd", "effective_from", "note"]
        return ["model", "input_price", "output_price", "cached_input_price",
                "cache_write_price", "reasoning_price", "effective_from", "note", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.get_fields(request, obj)

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    input_price = money_column("input_price_per_million_micros", "input / 1M", exact=True,
                               sortable=True)
    output_price = money_column("output_price_per_million_micros", "output / 1M", exact=True,
                                sortable=True)
    cached_input_price = class_price_column("cached_input_price_per_million_micros",
                                            "cached input / 1M", "input")
    cache_write_price = class_price_column("cache_write_price_per_million_micros",
                                           "cache write / 1M", "input")
    reasoning_price = class_price_column("reasoning_price_per_million_micros",
                                         "reasoning / 1M", "output")


class UpstreamForm(forms.ModelForm):
    """The API key is write-only: never rendered back; blank keeps the stored one."""

    api_key = forms.CharField(
        required=False, label="API key", strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: never shown again. Leave blank to keep the current key.")
    clear_api_key = forms.BooleanField(required=False, label="Remove the stored API key")
    base_url = forms.URLField(max_length=500, required=False, assume_scheme="https",
                              help_text="Up to the version, e.g. https://api.openai.com/v1")

    class Meta:
        model = Upstream
        fields = ["name", "base_url", "api_key", "clear_api_key", "connect_timeout_seconds",
                  "read_timeout_seconds", "from_settings", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stored_api_key = self.instance.api_key
        self.initial.pop("api_key", None)

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("from_settings") and not cleaned.get("base_url"):
            self.add_error("base_url", "A base URL is needed unless the upstream follows "
                                       "the settings.")
        return cleaned

    def save(self, commit=True):
        key = self.cleaned_data.get("api_key")
        if self.cleaned_data.get("clear_api_key"):
            self.instance.api_key = ""
        elif not key:
            self.instance.api_key = self.stored_api_key
        return super().save(commit)


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamForm
    list_display = ["name", "base_url_shown", "api_key_set", "connect_timeout_seconds",
                    "read_timeout_seconds", "active", "deployment_count"]
    list_filter = ["active", "from_settings"]
    search_fields = ["name", "base_url"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deployments")

    @admin.display(description="base URL")
    def base_url_shown(self, obj):
        return "UPSTREAM_BASE_URL (settings)" if obj.from_settings else obj.base_url

    @admin.display(description="API key", boolean=True)
    def api_key_set(self, obj):
        return obj.from_settings or obj.has_api_key

    @admin.display(description="deployments")
    def deployment_count(self, obj):
        return len(obj.deployments.all())


@admin.register(UsageRecord)
class UsageRecordAdmin(ExportableHistoryAdmin):
    list_display = ["request_id", "started_at", "user", "model", "status", "prompt_tokens",
                    "cached_tokens", "completion_tokens", "reasoning_tokens", "cost", "estimated",
                    "upstream", "streamed", "promotion_applied", "latency_ms"]
    list_filter = ["status", "model", UserIdFilter, ("started_at", admin.DateFieldListFilter),
                   "streamed", "promotion_applied", "estimated", "upstream"]
    search_fields = ["request_id", "user__email"]
    list_select_related = ["user", "model"]
    date_hierarchy = "started_at"
    csv_fields = ["request_id", "started_at", "user", "model_id", "endpoint", "status",
                  "prompt_tokens", "cached_tokens", "cache_write_tokens", "completion_tokens",
                  "reasoning_tokens", "input_price_usd", "cached_input_price_usd",
                  "cache_write_price_usd", "output_price_usd", "reasoning_price_usd", "cost_usd",
                  "estimated", "upstream", "attempts", "streamed", "promotion_applied",
                  "finish_reason", "error", "latency_ms", "time_to_first_token_ms"]

    cost = money_column("cost_micros", exact=True, sortable=True)
    cost_usd = money_column("cost_micros", exact=True)
    input_price_usd = money_column("input_price_per_million_micros", exact=True)
    output_price_usd = money_column("output_price_per_million_micros", exact=True)
    cached_input_price_usd = money_column("cached_input_price_per_million_micros", exact=True)
    cache_write_price_usd = money_column("cache_write_price_per_million_micros", exact=True)
    reasoning_price_usd = money_column("reasoning_price_per_million_micros", exact=True)
