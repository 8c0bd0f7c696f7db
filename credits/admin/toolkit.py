"""The pieces every console admin shares: read-only history, money columns, the user
filter and CSV export (billing's and inference's admins use them too).

History (entries, grants, holds, the staff-action audit, usage, purchases) is read-only
for everyone, superusers included; money columns show integer micro-dollars as USD.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from accounts.models import User
from credits import money
from credits.exports import csv_writer


def usd(micros: int | None) -> str:
    return "" if micros is None else money.display_usd(micros)


def percent(share: float | None) -> str:
    """A share of a cohort as the console shows it: one decimal, "—" when there is none."""
    return "—" if share is None else f"{share * 100:.1f}%"


def usd_exact(micros: int | None) -> str:
    return "" if micros is None else money.format_usd(micros)


def money_column(field: str, description: str | None = None, *, exact: bool = False,
                 sortable: bool = False, zero: str | None = None,
                 instead: Callable[[object], str | None] | None = None) -> Callable[..., str]:
    """A column (list_display, readonly_fields, csv_fields) showing `field`, integer
    micro-dollars, as USD.

    `field` may follow relations (`grant__amount_micros`); the header defaults to its last
    part without `_micros`. exact: six decimals (CSV, prices) instead of the display rounding;
    sortable: the column orders by `field`; zero: what a zero amount shows instead;
    instead: a text to show in place of the amount for some rows (None: the amount).
    Every money column of the console comes from here, so they all read alike.
    """
    path = field.split("__")
    show = usd_exact if exact else usd

    def column(modeladmin, obj) -> str:
        if instead is not None and (text := instead(obj)) is not None:
            return text
        micros = obj
        for name in path:
            micros = getattr(micros, name)
        if zero is not None and not micros:
            return zero
        return show(micros)

    return admin.display(
        description=description or path[-1].removesuffix("_micros").replace("_", " "),
        ordering=field if sortable else None,
    )(column)


# --- read-only history and CSV ------------------------------------------------------


class _NoWrites:
    """No add, change or delete for anyone (superusers included): history is append-only."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(_NoWrites, admin.ModelAdmin):
    """A model admin that only shows rows: no add, change or delete, superusers included."""


class ReadOnlyInline(_NoWrites, admin.TabularInline):
    """An inline table that only shows rows."""

    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False


class HistoryAdmin(ReadOnlyAdmin):
    """A long append-only table: paged by 50, never counted whole."""

    list_per_page = 50
    show_full_result_count = False  # no COUNT(*) over the whole ledger on every page


def _csv_value(modeladmin, obj, name: str) -> str:
    if hasattr(modeladmin, name):
        value = getattr(modeladmin, name)(obj)
    else:
        value = getattr(obj, name)
        value = value() if callable(value) else value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return "" if value is None else str(value)


def csv_download(filename: str, header, rows) -> HttpResponse:
    """A console CSV download: `header`, then each of `rows`, through credits.exports' writer
    (cells a spreadsheet would run as formulas are quoted)."""
    response = HttpResponse(content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv_writer(response)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
    return response


@admin.action(description="Export selected rows as CSV")
def export_as_csv(modeladmin, request: HttpRequest, queryset) -> HttpResponse:
    """Money columns in exact USD strings (six decimals), never rounded for display; cells a
    spreadsheet would run as formulas are quoted (credits.exports)."""
    fields = modeladmin.csv_fields
    return csv_download(
        f"{modeladmin.model._meta.model_name}s.csv", fields,
        ([_csv_value(modeladmin, obj, f) for f in fields]
         for obj in queryset.iterator(chunk_size=2000)))


class ExportableHistoryAdmin(HistoryAdmin):
    """History that staff can export: the selected rows' `csv_fields` as CSV."""

    actions = [export_as_csv]
    csv_fields: list[str] = []


class UserIdFilter(admin.SimpleListFilter):
    """Filter by one user (linked from the user page: ?user_id=<id>)."""

    title = "user"
    parameter_name = "user_id"

    def lookups(self, request, model_admin):
        value = request.GET.get(self.parameter_name)
        if value and value.isdigit():
            user = User.objects.filter(pk=int(value)).first()
            if user is not None:
                return [(str(user.pk), user.email)]
        return []

    def queryset(self, request, queryset):
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(user_id=int(value))
        return queryset


class TinyUserFilter(admin.RelatedOnlyFieldListFilter):
    """Staff columns: only the people who appear in them."""
