"""The nightly reconciliation, read-only: its runs and the mismatches it found
(credits.reconciliation writes them; nobody edits them here)."""

from django.contrib import admin

from credits.admin.toolkit import ExportableHistoryAdmin
from credits.models import LedgerMismatch, ReconciliationRun


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ExportableHistoryAdmin):
    """Every night's check of the books: accounts checked, mismatches found (new ones were
    emailed to staff). A run with an error stopped part-way; the next night starts over."""

    list_display = ["started_at", "finished_at", "accounts_checked", "mismatches",
                    "new_mismatches", "error"]
    date_hierarchy = "started_at"
    fields = ["started_at", "finished_at", "accounts_checked", "mismatches", "new_mismatches",
              "report", "error"]
    csv_fields = ["id", "started_at", "finished_at", "accounts_checked", "mismatches",
                  "new_mismatches", "error"]


class OpenFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Still found"), ("resolved", "No longer found")]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(LedgerMismatch)
class LedgerMismatchAdmin(ExportableHistoryAdmin):
    """What the reconciliation found wrong, open until a run no longer finds it. Nothing
    was changed: `manage.py credits_verify --user <id>` checks a user again."""

    list_display = ["key", "user_id", "first_seen_at", "last_seen_at", "resolved_at",
                    "reported_at"]
    list_filter = [OpenFilter]
    search_fields = ["key", "description", "=user_id"]
    csv_fields = ["id", "key", "user_id", "description", "first_seen_at", "last_seen_at",
                  "resolved_at", "reported_at", "first_run_id", "last_run_id"]
