"""The books in the credit console: ledger entries, grants, holds and notifications.

All read-only and exportable as CSV; credit moves only through the staff-action pages
(credits.admin.money_actions), which the grant admin offers.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from credits.admin.money_actions import GRANT_ACTIONS, MoneyActionsMixin
from credits.admin.toolkit import (
    ExportableHistoryAdmin,
    TinyUserFilter,
    UserIdFilter,
    money_column,
    usd,
)
from credits.models import CreditGrant, CreditHold, LedgerEntry, Notification, SweepFailure


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ExportableHistoryAdmin):
    list_display = ["id", "created_at", "user", "entry_type", "amount", "held_change",
                    "balance_after", "grant_id", "actor", "description", "internal_reason",
                    "reference"]
    list_filter = ["entry_type", UserIdFilter, ("created_at", admin.DateFieldListFilter),
                   ("actor", TinyUserFilter)]
    search_fields = ["user__email", "reference", "operation_key", "description",
                     "internal_reason"]
    list_select_related = ["user", "actor"]
    date_hierarchy = "created_at"
    csv_fields = ["id", "created_at", "user", "entry_type", "amount_usd", "held_change_usd",
                  "balance_after_usd", "grant_id", "hold_id", "actor", "description",
                  "internal_reason", "reference", "operation_key"]

    amount = money_column("amount_micros", exact=True, sortable=True)
    held_change = money_column("held_change_micros", exact=True, zero="")
    balance_after = money_column("balance_after_micros", exact=True)
    amount_usd = money_column("amount_micros", exact=True)
    held_change_usd = money_column("held_change_micros", exact=True)
    balance_after_usd = money_column("balance_after_micros", exact=True)


class GrantStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Has credit left"), ("expired", "Past expiry"), ("voided", "Voided"),
                ("empty", "Used up")]

    def queryset(self, request, queryset):
        now = timezone.now()
        match self.value():
            case "open":
                return queryset.filter(remaining_micros__gt=0, voided_at__isnull=True).exclude(
                    expires_at__lte=now)
            case "expired":
                return queryset.filter(expires_at__lte=now)
            case "voided":
                return queryset.filter(voided_at__isnull=False)
            case "empty":
                return queryset.filter(remaining_micros=0)
        return queryset


@admin.register(CreditGrant)
class CreditGrantAdmin(MoneyActionsMixin, ExportableHistoryAdmin):
    money_actions = GRANT_ACTIONS
    list_display = ["id", "user", "kind", "amount", "remaining", "held", "granted_at",
                    "expires_at", "voided_at", "promotion_variant", "actor", "description",
                    "internal_reason"]
    list_filter = ["kind", GrantStateFilter, UserIdFilter, ("granted_at", admin.DateFieldListFilter),
                   "promotion_variant"]
    search_fields = ["user__email", "description", "source_reference", "idempotency_key"]
    list_select_related = ["user", "actor", "promotion_variant__promotion"]
    date_hierarchy = "granted_at"
    csv_fields = ["id", "user", "kind", "amount_usd", "remaining_usd", "held_usd", "granted_at",
                  "expires_at", "voided_at", "promotion_variant", "actor", "description",
                  "internal_reason", "source_reference"]

    amount = money_column("amount_micros", sortable=True)
    remaining = money_column("remaining_micros", sortable=True)
    held = money_column("held_micros", zero="")
    amount_usd = money_column("amount_micros", exact=True)
    remaining_usd = money_column("remaining_micros", exact=True)
    held_usd = money_column("held_micros", exact=True)

    def money_targets(self, ids):
        return list(CreditGrant.objects.filter(pk__in=ids).select_related("user").order_by("pk"))

    def describe_target(self, grant) -> str:
        expiry = grant.expires_at.isoformat(timespec="minutes") if grant.expires_at else "never"
        return (f"#{grant.pk} {grant.get_kind_display()} for {grant.user.email}: "
                f"{usd(grant.remaining_micros)} left of {usd(grant.amount_micros)}, "
                f"expires {expiry}")


@admin.register(CreditHold)
class CreditHoldAdmin(ExportableHistoryAdmin):
    list_display = ["id", "user", "status", "amount", "pending_promotion", "captured",
                    "delivered", "reference", "created_at", "journal_at", "settled_at", "swept"]
    list_filter = ["status", UserIdFilter, ("created_at", admin.DateFieldListFilter)]
    search_fields = ["user__email", "reference"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    csv_fields = ["id", "user", "status", "amount_usd", "pending_promotion_usd", "captured_usd",
                  "reference", "created_at", "settled_at"]

    amount = money_column("amount_micros")
    pending_promotion = money_column("pending_promotion_micros", "against pending promotion",
                                     zero="")
    captured = money_column("captured_micros")
    amount_usd = money_column("amount_micros", exact=True)
    pending_promotion_usd = money_column("pending_promotion_micros", exact=True)
    captured_usd = money_column("captured_micros", exact=True)

    @admin.display(description="delivered (journal)")
    def delivered(self, obj):
        return f"{usd(obj.delivered_micros)} ({obj.delivered_tokens} tokens)" if obj.journal_at else ""


@admin.register(SweepFailure)
class SweepFailureAdmin(ExportableHistoryAdmin):
    """Units (a user, a hold) a periodic sweep keeps failing on: it goes on with the others;
    a row goes away by itself once a run succeeds on its unit."""

    list_display = ["sweep", "unit", "consecutive_failures", "first_failed_at", "last_failed_at",
                    "reported_at", "last_error"]
    list_filter = ["sweep"]
    search_fields = ["unit", "last_error"]
    csv_fields = ["sweep", "unit", "consecutive_failures", "first_failed_at", "last_failed_at",
                  "reported_at", "last_error"]


@admin.register(Notification)
class NotificationAdmin(ExportableHistoryAdmin):
    list_display = ["created_at", "user", "event", "subject", "emailed_at", "email_error"]
    list_filter = ["event", UserIdFilter, ("created_at", admin.DateFieldListFilter)]
    search_fields = ["user__email", "subject", "key"]
    list_select_related = ["user"]
    csv_fields = ["id", "created_at", "user", "event", "key", "subject", "emailed_at",
                  "email_error"]
