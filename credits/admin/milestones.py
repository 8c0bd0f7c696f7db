"""Milestones, referrals and what promotions earn back, in the credit console: tier lists
and their tiers (edited here; promotions and variants choose a list), the referral
programme's terms, the referrals themselves (claw back with a reason), and the earn-back
page with its CSV (linked from the promotion metrics page).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.template.response import TemplateResponse
from django.urls import path

from credits.admin.promotions import MetricsForm
from credits.admin.toolkit import HistoryAdmin, csv_download, money_column, percent, usd
from credits.models import (
    Promotion,
    PromotionTier,
    Referral,
    ReferralProgram,
    ReferralStatus,
    TierAward,
    TierList,
)
from credits.promotion import earnback, milestones, referrals


class PromotionTierInline(admin.TabularInline):
    model = PromotionTier
    extra = 1
    fields = ["position", "name", "trigger", "window_seconds", "threshold", "amount_micros",
              "match_percent", "expiry_days", "expiry_rule", "awarded"]
    readonly_fields = ["awarded"]

    @admin.display(description="awarded")
    def awarded(self, obj):
        return obj.awards.count() if obj.pk else 0

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # awards point at tiers; change the list a variant plays instead


@admin.register(TierList)
class TierListAdmin(admin.ModelAdmin):
    inlines = [PromotionTierInline]
    list_display = ["name", "tiers", "created_at"]

    @admin.display(description="milestones")
    def tiers(self, obj):
        return "; ".join(f"{t.position}. {milestones.describe(t)} → {usd(t.amount_micros)}"
                         for t in obj.tiers.order_by("position"))

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    # The earn-back page.
    def get_urls(self):
        return [
            path("earnback/", self.admin_site.admin_view(self.earnback_view),
                 name="credits_promotion_earnback"),
            *super().get_urls(),
        ]

    def earnback_view(self, request):
        if not (request.user.has_perm("credits.view_promotion")
                or request.user.has_perm("credits.change_promotion")):
            raise PermissionDenied
        form = MetricsForm(request.GET or None)
        start, end, promotion = form.cohort(days=60)
        rows = earnback.earnback_metrics(start=start, end=end,
                                         promotion_id=promotion.pk if promotion else None)
        if request.GET.get("format") == "csv":
            return csv_download(f"promotion-earnback-{start}-{end}.csv",
                                list(earnback.EarnBack(None, None, "").as_row()),
                                (row.as_row().values() for row in rows))
        if not form.is_bound:
            form = MetricsForm(initial={"start": start, "end": end})
        query = request.GET.copy()
        query["format"] = "csv"
        return TemplateResponse(request, "admin/credits/promotion_earnback.html", {
            **self.admin_site.each_context(request),
            "opts": Promotion._meta,
            "title": "What promotions earn back",
            "form": form, "start": start, "end": end, "table": _table(rows),
            "csv_query": query.urlencode(),
        })


def _table(rows: list[earnback.EarnBack]) -> dict:
    header = ["Promotion / variant", "Sign-ups", "Promo granted", "Used (cost)", "Expired",
              "Paying ≤7 d", "Paying ≤30 d", "Revenue ≤30 d", "Cost per paying user",
              "Payback", "Ran out", "Retained"]
    body = [[
        r.label, r.signups, usd(r.granted_micros), usd(r.used_micros), usd(r.expired_micros),
        f"{r.paying_7d} ({percent(r.conversion_7d)})", f"{r.paying_30d} ({percent(r.conversion_30d)})",
        usd(r.revenue_30d_micros),
        "—" if r.cost_per_paying_user_micros is None else usd(r.cost_per_paying_user_micros),
        "—" if r.payback is None else f"{r.payback:.2f}x", r.ran_out,
        f"{r.retained} ({percent(r.retention)})",
    ] for r in rows]
    return {"header": header, "rows": body}


@admin.register(TierAward)
class TierAwardAdmin(HistoryAdmin):
    list_display = ["awarded_at", "user", "tier", "amount", "triggered_at", "grant"]
    list_select_related = ["user", "tier", "tier__tier_list", "grant"]
    search_fields = ["user__email", "email_normalized"]
    amount = money_column("amount_micros")


@admin.register(ReferralProgram)
class ReferralProgramAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "condition", "referrer_amount", "referred_amount",
                    "expiry_days", "monthly_cap", "created_at"]
    referrer_amount = money_column("referrer_amount_micros", "referrer gets")
    referred_amount = money_column("referred_amount_micros", "welcome bonus")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # referrals name the programme they were made under


class ReferralClawBackForm(forms.Form):
    reason = forms.CharField(max_length=200, help_text="Recorded on the VOID entries.")


@admin.register(Referral)
class ReferralAdmin(HistoryAdmin):
    list_display = ["created_at", "referrer", "referred", "status", "refusal_reason",
                    "referrer_grant", "referred_grant", "clawed_back"]
    list_filter = ["status", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["referrer__email", "referred__email", "code"]
    list_select_related = ["referrer", "referred", "referrer_grant", "referred_grant"]
    actions = ["claw_back"]

    def has_claw_back_permission(self, request) -> bool:
        return (request.user.has_perm("credits.change_referral")
                and request.user.has_perm("credits.void_grant"))

    @admin.display(description="clawed back")
    def clawed_back(self, obj):
        return usd(obj.clawed_back_micros) if obj.status == ReferralStatus.CLAWED_BACK else ""

    @admin.action(description="Claw back both grants (void the unused rest with a reason)",
                  permissions=["claw_back"])
    def claw_back(self, request, queryset):
        form = ReferralClawBackForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            done = 0
            for referral in queryset.order_by("pk"):
                try:
                    referrals.claw_back_referral(referral=referral, actor=request.user,
                                                 reason=form.cleaned_data["reason"])
                except ValidationError as exc:
                    self.message_user(request, f"{referral}: {' '.join(exc.messages)}",
                                      messages.ERROR)
                    continue
                done += 1
            self.message_user(request, f"Clawed back {done} referral(s).", messages.SUCCESS)
            return None
        return TemplateResponse(request, "admin/credits/referral/claw_back.html", {
            **self.admin_site.each_context(request),
            "title": "Claw back referral credit", "opts": self.model._meta, "form": form,
            "referrals": queryset.select_related("referrer", "referred"),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })
