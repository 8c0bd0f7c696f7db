"""Users in the credit console: search, filters, the credit summary, money actions; API keys."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.admin import EmailUserChangeForm, EmailUserCreationForm
from accounts.models import ApiKey, User
from credits import money
from credits.admin.money_actions import (
    USER_ACTIONS,
    MoneyActionsMixin,
    _viewer,
    grant_action_links,
)
from credits.admin.toolkit import ReadOnlyAdmin, ReadOnlyInline, money_column, usd
from credits.models import CreditGrant, CreditHold, HoldStatus, LedgerEntry
from credits.promotion.status import eligibility_label, promotion_status
from credits.promotion.terms import eligible_now_q
from credits.selectors import get_user_credits, recent_charged_calls

LATEST_ENTRIES = 15


class HasBalanceFilter(admin.SimpleListFilter):
    title = "balance"
    parameter_name = "balance"

    def lookups(self, request, model_admin):
        return [("yes", "Has a balance"), ("no", "Zero balance")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(credit_account__balance_micros__gt=0)
        if self.value() == "no":
            return queryset.filter(credit_account__balance_micros=0)
        return queryset


class EligibleFilter(admin.SimpleListFilter):
    """Could still earn the first-token promotion now (inside their own window)."""

    title = "promotion eligible"
    parameter_name = "eligible"

    def lookups(self, request, model_admin):
        return [("yes", "Eligible now"), ("no", "Not eligible")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(eligible_now_q())
        if self.value() == "no":
            return queryset.exclude(pk__in=User.objects.filter(eligible_now_q()).values("pk"))
        return queryset


class GrantInline(ReadOnlyInline):
    model = CreditGrant
    fk_name = "user"
    verbose_name_plural = "credit grants"
    fields = ["grant_id", "kind", "amount", "remaining", "held", "granted_at", "expires_at",
              "voided_at", "promotion_variant", "description", "internal_reason", "staff_actions"]
    readonly_fields = fields
    ordering = ["-granted_at", "-id"]

    @admin.display(description="#")
    def grant_id(self, obj):
        return obj.pk

    amount = money_column("amount_micros")
    remaining = money_column("remaining_micros")
    held = money_column("held_micros")

    @admin.display(description="customer reads")
    def description(self, obj):
        return obj.customer_description

    @admin.display(description="actions")
    def staff_actions(self, obj):
        return grant_action_links(obj, _viewer.get())


class ActiveHoldInline(ReadOnlyInline):
    model = CreditHold
    verbose_name_plural = "active holds"
    fields = ["id", "amount", "pending_promotion", "reference", "created_at"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=HoldStatus.ACTIVE)

    amount = money_column("amount_micros")
    pending_promotion = money_column("pending_promotion_micros", "against pending promotion")


class ApiKeyInline(ReadOnlyInline):
    model = ApiKey
    verbose_name_plural = "API keys"
    fields = ["name", "masked", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields


@admin.register(User)
class UserAdmin(MoneyActionsMixin, DjangoUserAdmin):
    money_actions = USER_ACTIONS
    form = EmailUserChangeForm
    add_form = EmailUserCreationForm
    change_form_template = "admin/accounts/user/change_form.html"
    ordering = ["-date_joined"]
    list_display = ["email", "date_joined", "balance", "held", "promotion_claimed",
                    "first_token_at", "is_staff"]
    list_select_related = ["credit_account"]
    list_filter = ["promotion_claimed", EligibleFilter, ("date_joined", admin.DateFieldListFilter),
                   HasBalanceFilter, ("promotion_assignment__variant", admin.RelatedFieldListFilter),
                   "is_staff", "is_active", "groups"]
    search_fields = ["email", "api_keys__prefix"]
    show_full_result_count = False
    inlines = [GrantInline, ActiveHoldInline, ApiKeyInline]
    readonly_fields = ["credit_summary", "latest_entries", "promotion", "first_token_at",
                       "eligible_now", "promotion_claimed", "last_login", "date_joined",
                       "email_normalized", "email_verified_at", "promotion_withheld_reason"]
    fieldsets = (
        (None, {"fields": ("email", "email_normalized", "email_verified_at", "password")}),
        ("Credit", {"fields": ("credit_summary", "latest_entries")}),
        ("First-token promotion", {"fields": ("promotion", "first_token_at", "eligible_now",
                                              "promotion_claimed", "promotion_withheld_reason")}),
        ("Personal info", {"fields": ("first_name", "last_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups",
                                    "user_permissions"), "classes": ("collapse",)}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",),
                "fields": ("email", "usable_password", "password1", "password2")}),
    )

    balance = money_column("credit_account__balance_micros", "balance", sortable=True)
    held = money_column("credit_account__held_micros", "held", sortable=True, zero="")

    @admin.display(description="summary")
    def credit_summary(self, obj):
        if obj.pk is None:
            return "—"
        credits = get_user_credits(user=obj)
        purchased = sum(g.remaining_micros for g in credits.grants
                        if g.kind == "PURCHASED" and g.is_usable_at(timezone.now()))
        rows = [
            ("Balance", usd(credits.balance_micros)),
            ("Available now", usd(credits.available_micros)),
            ("Held by calls in flight", usd(credits.held_micros)),
            ("Promotional", usd(credits.promotional_micros)),
            ("Purchased", usd(purchased)),
            ("Other (refunds, adjustments, referrals)",
             usd(credits.balance_micros - credits.promotional_micros - purchased)),
            ("Next expiry", credits.next_expiry.isoformat(timespec="minutes")
             if credits.next_expiry else "—"),
            ("Exact balance (USD)", money.format_usd(credits.balance_micros)),
        ]
        return format_html(
            '<table class="credit-summary">{}</table>',
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows))

    @admin.display(description=f"latest {LATEST_ENTRIES} ledger entries")
    def latest_entries(self, obj):
        if obj.pk is None:
            return "—"
        entries = LedgerEntry.objects.filter(user=obj).select_related("actor")[:LATEST_ENTRIES]
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((e.created_at.isoformat(timespec="seconds"), e.get_entry_type_display(),
              money.format_usd(e.amount_micros), money.format_usd(e.balance_after_micros),
              e.actor or "", e.description) for e in entries))
        link = reverse("admin:credits_ledgerentry_changelist") + f"?user_id={obj.pk}"
        return format_html(
            '<table><tr><th>When</th><th>Type</th><th>Amount</th><th>Balance after</th>'
            '<th>Actor</th><th>Description</th></tr>{}</table><p><a href="{}">All entries…</a>'
            ' · <a href="{}">Staff actions…</a></p>',
            rows, link,
            reverse("admin:credits_staffaction_changelist") + f"?user_id={obj.pk}")

    @admin.display(description="promotion eligible")
    def eligible_now(self, obj):
        """Computed when the page is shown, by the rule the list filter uses: a window
        that closed a minute ago reads closed, whatever the stored flag says."""
        if obj.pk is None:
            return "—"
        return eligibility_label(promotion_status(obj, now=timezone.now()), now=timezone.now())

    @admin.display(description="assigned promotion")
    def promotion(self, obj):
        assignment = getattr(obj, "promotion_assignment", None) if obj.pk else None
        if assignment is None:
            return "None (PROMOTION_* settings)"
        return str(assignment.variant or assignment.promotion or "No promotion was running")

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def get_actions(self, request):
        """The money actions first; deleting users (rarely right: their history protects
        them) comes last, not as the first thing offered."""
        actions = super().get_actions(request)
        delete = actions.pop("delete_selected", None)
        if delete is not None:
            actions["delete_selected"] = delete
        return actions

    # The refund page: the customer's recent calls, each with its charge to prefill.
    def money_initial(self, spec, request, targets) -> dict:
        call = request.GET.get("call", "")
        if spec.name != "refund" or len(targets) != 1 or not call:
            return {}
        for recent in recent_charged_calls(user_id=targets[0].pk):
            if recent.request_id == call:
                return {"usage_reference": call,
                        "amount": money.format_usd(recent.refundable_micros)}
        return {"usage_reference": call}

    def money_extra_context(self, spec, request, targets) -> dict:
        if spec.name != "refund" or len(targets) != 1:
            return {}
        base = self.money_action_url("refund", [targets[0].pk])
        return {"recent_calls": [{
            "request_id": c.request_id, "at": c.at,
            "charged": usd(c.charged_micros), "refunded": usd(c.refunded_micros),
            "refundable": usd(c.refundable_micros), "can_refund": c.refundable_micros > 0,
            "pick_url": f"{base}&{urlencode({'call': c.request_id})}",
        } for c in recent_charged_calls(user_id=targets[0].pk)]}

    def change_view(self, request, object_id, form_url="", extra_context=None):
        _viewer.set(request.user)
        extra_context = extra_context or {}
        extra_context["money_buttons"] = [
            {"label": spec.label, "url": self.money_action_url(name, [object_id])}
            for name, spec in USER_ACTIONS.items() if spec.allowed(request.user)
        ]
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    """Keys are created by their owner, who alone sees the secret; usage records name the
    key, so it is revoked (user page), never deleted."""

    list_display = ["masked", "name", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("created_at", admin.DateFieldListFilter), ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "user__email", "name"]
    list_select_related = ["user"]
    fields = ["user", "name", "masked", "created_at", "last_used_at", "revoked_at",
              "rate_limit_requests_per_minute", "rate_limit_tokens_per_minute"]
    readonly_fields = ["user", "name", "masked", "created_at", "last_used_at", "revoked_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        # Only the key's rate limits can change (accounts.throttles reads them per call).
        return request.user.has_perm("accounts.change_apikey")
