"""Admin for the sign-up credit's abuse controls .

Domain rules are edited here; sign-ups and claims are read-only history; flagged
grants are confirmed or clawed back through credits.promotion.review (never by editing rows).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse

from credits.admin.toolkit import HistoryAdmin, money_column
from credits.models import EmailDomainRule, PromotionClaim, PromotionReview, ReviewStatus, SignupRecord
from credits.promotion import review as reviews


@admin.register(EmailDomainRule)
class EmailDomainRuleAdmin(admin.ModelAdmin):
    list_display = ["domain", "action", "note", "created_at"]
    list_filter = ["action"]
    search_fields = ["domain", "note"]


@admin.register(SignupRecord)
class SignupRecordAdmin(HistoryAdmin):
    list_display = ["created_at", "email_normalized", "user", "ip", "network"]
    list_filter = [("created_at", admin.DateFieldListFilter)]
    search_fields = ["email_normalized", "ip", "network"]
    list_select_related = ["user"]


@admin.register(PromotionClaim)
class PromotionClaimAdmin(HistoryAdmin):
    list_display = ["claimed_at", "email_normalized", "user", "amount", "network", "grant"]
    list_filter = [("claimed_at", admin.DateFieldListFilter)]
    search_fields = ["email_normalized", "network"]
    list_select_related = ["user", "grant"]

    amount = money_column("amount_micros")


class ClawBackForm(forms.Form):
    reason = forms.CharField(
        max_length=200, label="Internal reason",
        help_text="Staff and the audit only (the VOID entry's internal reason, the review); "
                  "never shown to the customer.")
    customer_note = forms.CharField(
        max_length=255, required=False, label="Note to the customer",
        help_text="Optional: what the customer reads in their history and the email we send. "
                  "Empty: “Promotional credit reversed after review”.")


@admin.register(PromotionReview)
class PromotionReviewAdmin(HistoryAdmin):
    list_display = ["created_at", "user", "grant", "granted", "left", "signals", "status",
                    "decided_by", "clawed_back"]
    list_filter = ["status", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["user__email", "signals"]
    list_select_related = ["user", "grant", "decided_by"]
    actions = ["confirm", "claw_back"]
    readonly_fields = ["grant", "user", "signals", "details", "status", "created_at",
                       "decided_by", "decided_at", "note", "clawed_back_micros"]

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff and (
            request.user.has_perm("credits.view_promotionreview")
            or request.user.has_perm("credits.change_promotionreview"))

    def has_confirm_permission(self, request) -> bool:
        return request.user.has_perm("credits.change_promotionreview")

    def has_claw_back_permission(self, request) -> bool:
        return (request.user.has_perm("credits.change_promotionreview")
                and request.user.has_perm("credits.void_grant"))

    granted = money_column("grant__amount_micros", "granted")

    left = money_column("grant__remaining_micros", "left",
                        instead=lambda r: "voided" if r.grant.voided_at else None)
    clawed_back = money_column(
        "clawed_back_micros", "clawed back",
        instead=lambda r: None if r.status == ReviewStatus.CLAWED_BACK else "")

    def _each_flagged(self, request, queryset, do) -> int:
        done = 0
        for review in queryset.filter(status=ReviewStatus.FLAGGED).order_by("pk"):
            try:
                do(review)
            except ValidationError as exc:
                self.message_user(request, f"{review}: {' '.join(exc.messages)}", messages.ERROR)
                continue
            done += 1
        skipped = queryset.exclude(status=ReviewStatus.FLAGGED).count()
        if skipped:
            self.message_user(request, f"{skipped} review(s) were already decided and were left alone.",
                              messages.WARNING)
        return done

    @admin.action(description="Confirm: the grant stands", permissions=["confirm"])
    def confirm(self, request, queryset):
        done = self._each_flagged(request, queryset, lambda r: reviews.confirm_review(
            review=r, actor=request.user))
        self.message_user(request, f"Confirmed {done} grant(s).", messages.SUCCESS)

    @admin.action(description="Claw back the unused rest (void with a reason)",
                  permissions=["claw_back"])
    def claw_back(self, request, queryset):
        form = ClawBackForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            reason = form.cleaned_data["reason"]
            note = form.cleaned_data["customer_note"]
            done = self._each_flagged(request, queryset, lambda r: reviews.claw_back(
                review=r, actor=request.user, reason=reason, customer_note=note))
            self.message_user(request, f"Clawed back {done} grant(s). Purchased credit is untouched.",
                              messages.SUCCESS)
            return None
        return TemplateResponse(request, "admin/credits/promotionreview/claw_back.html", {
            **self.admin_site.each_context(request),
            "title": "Claw back sign-up credit",
            "opts": self.model._meta,
            "form": form,
            "reviews": queryset.select_related("user", "grant"),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })
