"""Models, their price history and usage records in the credit console.

A price change is a new ModelPrice row with its `effective_from`; existing rows
are never edited or deleted (a call copies the price in effect when it starts,
so history must stay what it was). Usage records are read-only, with CSV.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.utils import timezone

from credits import money
from credits.admin.toolkit import ExportableHistoryAdmin, UserIdFilter, money_column, usd_exact
from inference.models import AiModel, ModelPrice, UsageRecord

# A new price may start a little before "now" (the form was opened a moment ago),
# never further back: calls already made keep the price they started at.
BACKDATE_TOLERANCE = dt.timedelta(minutes=10)


class PriceForm(forms.ModelForm):
    """Prices typed as USD per million tokens, stored as integer micro-dollars."""

    input_usd = forms.DecimalField(max_digits=14, decimal_places=6, min_value=Decimal(0),
                                   label="Input USD per 1M tokens")
    output_usd = forms.DecimalField(max_digits=14, decimal_places=6, min_value=Decimal(0),
                                    label="Output USD per 1M tokens")

    class Meta:
        model = ModelPrice
        fields = ["input_usd", "output_usd", "effective_from", "note"]

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
        return cleaned


class PriceInline(admin.TabularInline):
    """The price history: add a row to change a price; existing rows are read-only."""

    model = ModelPrice
    form = PriceForm
    extra = 0
    can_delete = False
    ordering = ["-effective_from"]
    fields = ["input_usd", "output_usd", "effective_from", "note", "created_at"]
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


@admin.register(AiModel)
class AiModelAdmin(admin.ModelAdmin):
    list_display = ["id", "display_name", "backend", "active", "current_input_price",
                    "current_output_price", "next_price_change"]
    list_filter = ["active", "backend"]
    search_fields = ["id", "display_name", "upstream_model"]
    inlines = [PriceInline]

    def get_readonly_fields(self, request, obj=None):
        return ["id", "created_at"] if obj is not None else ["created_at"]

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
            return ["model", "input_usd", "output_usd", "effective_from", "note"]
        return ["model", "input_price", "output_price", "effective_from", "note", "created_at"]

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


@admin.register(UsageRecord)
class UsageRecordAdmin(ExportableHistoryAdmin):
    list_display = ["request_id", "started_at", "user", "model", "status", "prompt_tokens",
                    "completion_tokens", "cost", "streamed", "promotion_applied", "latency_ms"]
    list_filter = ["status", "model", UserIdFilter, ("started_at", admin.DateFieldListFilter),
                   "streamed", "promotion_applied"]
    search_fields = ["request_id", "user__email"]
    list_select_related = ["user", "model"]
    date_hierarchy = "started_at"
    csv_fields = ["request_id", "started_at", "user", "model_id", "endpoint", "status",
                  "prompt_tokens", "completion_tokens", "input_price_usd", "output_price_usd",
                  "cost_usd", "streamed", "promotion_applied", "finish_reason", "error",
                  "latency_ms", "time_to_first_token_ms"]

    cost = money_column("cost_micros", exact=True, sortable=True)
    cost_usd = money_column("cost_micros", exact=True)
    input_price_usd = money_column("input_price_per_million_micros", exact=True)
    output_price_usd = money_column("output_price_per_million_micros", exact=True)
