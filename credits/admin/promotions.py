"""The first-token promotion in the credit console: promotions and their variants (edited
here, never deleted; a kill switch stops new awards), who was assigned to which, and the
metrics page that hangs off the promotion admin.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from credits import money
from credits.admin import charts
from credits.admin.toolkit import ExportableHistoryAdmin, csv_download, percent, usd
from credits.models import ExpiryRule, Promotion, PromotionAssignment, PromotionVariant
from credits.promotion import metrics
from credits.promotion import terms as promotions


class UsdTermsForm(forms.ModelForm):
    """Edits `amount_micros` as USD; empty keeps the fallback (settings / the promotion)."""

    amount_usd = forms.DecimalField(
        required=False, max_digits=14, decimal_places=6, min_value=Decimal("0.000001"),
        label="Amount (USD)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.amount_micros is not None:
            self.initial["amount_usd"] = Decimal(self.instance.amount_micros) / money.MICROS_PER_USD

    def clean(self):
        cleaned = super().clean()
        value = cleaned.get("amount_usd")
        self.instance.amount_micros = None if value is None else money.usd_to_micros(value)
        return cleaned


class PromotionForm(UsdTermsForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["expiry_rule"].required = False  # empty: today's fixed expiry

    def clean_expiry_rule(self):
        return self.cleaned_data.get("expiry_rule") or ExpiryRule.FIXED

    class Meta:
        model = Promotion
        fields = ["name", "kind", "is_active", "active_from", "active_to", "amount_usd",
                  "window_seconds", "expiry_days", "expiry_rule", "extension_days",
                  "expiry_cap_days", "tier_list"]


class VariantForm(UsdTermsForm):
    class Meta:
        model = PromotionVariant
        fields = ["name", "weight", "amount_usd", "window_seconds", "expiry_days", "tier_list"]


class PromotionVariantInline(admin.TabularInline):
    model = PromotionVariant
    form = VariantForm
    extra = 0
    fields = ["name", "weight", "amount_usd", "window_seconds", "expiry_days", "tier_list",
              "assigned"]
    readonly_fields = ["assigned"]

    @admin.display(description="users assigned")
    def assigned(self, obj):
        return obj.assignments.count() if obj.pk else 0

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # assignments and grants point at variants; set weight to... add another


@admin.register(Promotion)
class PromotionAdmin(admin.ModelAdmin):
    form = PromotionForm
    inlines = [PromotionVariantInline]
    list_display = ["name", "kind", "is_active", "active_from", "active_to", "terms",
                    "variant_count", "assigned", "paused_reason"]
    list_filter = ["kind", "is_active"]
    actions = ["kill_switch", "reactivate"]
    change_list_template = "admin/credits/promotion/change_list.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_variants=Count("variants", distinct=True),
            n_assigned=Count("assignments", distinct=True))

    @admin.display(description="terms (empty fields: settings)")
    def terms(self, obj):
        t = promotions.terms_for(obj, None)
        return f"{usd(t.amount_micros)} within {t.window_seconds}s, expires after {t.expiry_days}d"

    @admin.display(description="variants", ordering="n_variants")
    def variant_count(self, obj):
        return obj.n_variants

    @admin.display(description="users assigned", ordering="n_assigned")
    def assigned(self, obj):
        return obj.n_assigned

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # users are assigned to it; use the kill switch

    @admin.action(description="Kill switch: stop new awards now", permissions=["change"])
    def kill_switch(self, request, queryset):
        for promotion in queryset:
            promotions.deactivate_promotion(promotion=promotion)
            self.log_change(request, promotion, "Kill switch: new awards stopped.")
        self.message_user(request, f"Stopped {queryset.count()} promotion(s); awarded credit "
                                   "is untouched.", messages.WARNING)

    @admin.action(description="Reactivate", permissions=["change"])
    def reactivate(self, request, queryset):
        for promotion in queryset:
            promotions.reactivate_promotion(promotion=promotion)
            self.log_change(request, promotion, "Reactivated: new awards resume.")
        self.message_user(request, f"Reactivated {queryset.count()} promotion(s).", messages.SUCCESS)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        if not form.instance.variants.exists():  # every grant can then name its variant
            PromotionVariant.objects.create(promotion=form.instance, name="default", weight=1)

    # The metrics page.
    def get_urls(self):
        return [
            path("metrics/", self.admin_site.admin_view(self.metrics_view),
                 name="credits_promotion_metrics"),
            *super().get_urls(),
        ]

    def metrics_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = MetricsForm(request.GET or None)
        start, end, promotion = form.cohort(days=30)
        rows = metrics.promotion_metrics(start=start, end=end,
                                         promotion_id=promotion.pk if promotion else None)
        if request.GET.get("format") == "csv":
            header = list(rows[0].as_row()) if rows else list(
                metrics.VariantMetrics(None, None, "", 0).as_row())
            return csv_download(f"promotion-metrics-{start}-{end}.csv", header,
                                (row.as_row().values() for row in rows))
        if not form.is_bound:
            form = MetricsForm(initial={"start": start, "end": end})
        query = request.GET.copy()
        query["format"] = "csv"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Promotion metrics",
            "form": form,
            "rows": rows,
            "table": _table(rows),
            "bars": _bars(rows),
            **_trend_charts(metrics.daily_trend(
                start=start, end=end, promotion_id=promotion.pk if promotion else None)),
            "start": start,
            "end": end,
            "csv_query": query.urlencode(),
        }
        return TemplateResponse(request, "admin/credits/promotion_metrics.html", context)


class MetricsForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                            label="Signed up from")
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                          label="to (inclusive)")
    promotion = forms.ModelChoiceField(queryset=Promotion.objects.all(), required=False,
                                       empty_label="All promotions")

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("start") and cleaned.get("end") and cleaned["start"] > cleaned["end"]:
            raise forms.ValidationError("The start date is after the end date.")
        return cleaned

    def cohort(self, *, days: int) -> tuple[dt.date, dt.date, Promotion | None]:
        """The sign-up cohort asked for: the form's dates and promotion, else (unbound or
        invalid) the last `days` days up to today and every promotion."""
        today = timezone.now().date()
        start, end, promotion = today - dt.timedelta(days=days - 1), today, None
        if self.is_bound and self.is_valid():
            start = self.cleaned_data["start"] or start
            end = self.cleaned_data["end"] or end
            promotion = self.cleaned_data["promotion"]
        return start, end, promotion


def _table(rows: list[metrics.VariantMetrics]) -> dict:
    def secs(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}s"

    # Eleven columns that fit a 1280 px screen (the CSV keeps every figure apart).
    header = ["Promotion / variant", "Window", "Sign-ups", "First token in window",
              "To first token (median / p90)", "Promo granted", "Used by calls",
              "Expired", "Voided or taken back", "Outstanding", "Retained after running out"]
    body = [[
        r.label, f"{r.window_seconds}s", r.signups,
        f"{r.first_token_in_window} ({percent(r.first_token_share)})",
        f"{secs(r.median_seconds_to_first_token)} / {secs(r.p90_seconds_to_first_token)}",
        usd(r.granted_micros), f"{usd(r.used_micros)} ({percent(r.utilization)})",
        usd(r.expired_micros), usd(r.voided_micros), usd(r.outstanding_micros),
        f"{r.retained} of {r.ran_out} ({percent(r.retention)})",
    ] for r in rows]
    return {"header": header, "rows": body}


def _trend_charts(days: list[metrics.TrendDay]) -> dict:
    """The daily trend: sign-ups and first tokens in the window; promotion credit granted
    and used (server-rendered SVG, credits.admin.charts)."""
    dates = [d.day for d in days]
    return {
        "trend_people": charts.daily_bars(dates, [
            charts.Series("Sign-ups", "s-signups", [d.signups for d in days]),
            charts.Series("First token in window", "s-first", [d.first_tokens_in_window
                                                               for d in days]),
        ], title="Sign-ups and first tokens per day"),
        "trend_credit": charts.daily_bars(dates, [
            charts.Series("Promotion credit granted", "s-granted",
                          [d.granted_micros for d in days]),
            charts.Series("Used by calls", "s-used", [d.used_micros for d in days]),
        ], fmt=_short_usd, title="Promotion credit per day", min_top=money.MICROS_PER_USD),
    }


def _short_usd(micros: int) -> str:
    """Axis labels: whole dollars once above $10, cents below."""
    if micros >= 10 * money.MICROS_PER_USD:
        return f"${micros // money.MICROS_PER_USD:,}"
    return usd(micros)


def _bars(rows: list[metrics.VariantMetrics]) -> list[dict]:
    """Width percentages for the simple CSS bar charts."""
    top_cost = max([r.granted_micros for r in rows] + [1])
    out = []
    for r in rows:
        out.append({
            "label": r.label,
            "share": round((r.first_token_share or 0) * 100, 1),
            "retention": round((r.retention or 0) * 100, 1),
            "used": round(r.used_micros * 100 / top_cost, 1),
            "expired": round(r.expired_micros * 100 / top_cost, 1),
            "outstanding": round(max(r.outstanding_micros, 0) * 100 / top_cost, 1),
            "used_usd": usd(r.used_micros),
            "expired_usd": usd(r.expired_micros),
            "granted_usd": usd(r.granted_micros),
        })
    return out


@admin.register(PromotionAssignment)
class PromotionAssignmentAdmin(ExportableHistoryAdmin):
    list_display = ["user", "promotion", "variant", "assigned_at"]
    list_filter = ["promotion", "variant", ("assigned_at", admin.DateFieldListFilter)]
    search_fields = ["user__email"]
    list_select_related = ["user", "promotion", "variant"]
    csv_fields = ["user_id", "user", "promotion", "variant", "assigned_at"]
