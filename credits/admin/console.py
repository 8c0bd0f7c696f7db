"""Django admin as the credit console.

History (entries, grants, holds, the staff-action audit) is read-only for
everyone, superusers included, and exportable as CSV. Money moves only through
the staff-action pages (form -> confirmation -> credits.staff_actions), which
turn credits.exceptions into form errors. Promotions are edited here; the
metrics page hangs off the promotion admin.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.models import User
from credits import money, staff_actions
from credits.exceptions import CreditError
from credits.models import (
    CreditGrant,
    CreditHold,
    GrantKind,
    LedgerEntry,
    Notification,
    Promotion,
    PromotionAssignment,
    PromotionVariant,
    StaffAction,
    StaffActionKind,
    StaffActionStatus,
    SweepFailure,
)
from credits.promotion import metrics
from credits.promotion import terms as promotions
from credits.selectors import call_charge

MAX_BULK = 500


def usd(micros: int | None) -> str:
    return "" if micros is None else money.display_usd(micros)


def usd_exact(micros: int | None) -> str:
    return "" if micros is None else money.format_usd(micros)


# --- read-only history and CSV ------------------------------------------------------


def _csv_value(modeladmin, obj, name: str) -> str:
    if hasattr(modeladmin, name):
        value = getattr(modeladmin, name)(obj)
    else:
        value = getattr(obj, name)
        value = value() if callable(value) else value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return "" if value is None else str(value)


@admin.action(description="Export selected rows as CSV")
def export_as_csv(modeladmin, request: HttpRequest, queryset) -> HttpResponse:
    """Money columns in exact USD strings (six decimals), never rounded for display."""
    fields = modeladmin.csv_fields
    response = HttpResponse(content_type="text/csv")
    name = modeladmin.model._meta.model_name
    response["Content-Disposition"] = f'attachment; filename="{name}s.csv"'
    writer = csv.writer(response)
    writer.writerow(fields)
    for obj in queryset.iterator(chunk_size=2000):
        writer.writerow([_csv_value(modeladmin, obj, f) for f in fields])
    return response


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete for anyone (superusers included): history is append-only."""

    actions = [export_as_csv]
    csv_fields: list[str] = []
    list_per_page = 50
    show_full_result_count = False  # no COUNT(*) over the whole ledger on every page

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "user", "entry_type", "amount", "held_change",
                    "balance_after", "grant_id", "actor", "description", "reference"]
    list_filter = ["entry_type", UserIdFilter, ("created_at", admin.DateFieldListFilter),
                   ("actor", TinyUserFilter)]
    search_fields = ["user__email", "reference", "operation_key", "description"]
    list_select_related = ["user", "actor"]
    date_hierarchy = "created_at"
    csv_fields = ["id", "created_at", "user", "entry_type", "amount_usd", "held_change_usd",
                  "balance_after_usd", "grant_id", "hold_id", "actor", "description", "reference",
                  "operation_key"]

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj):
        return usd_exact(obj.amount_micros)

    @admin.display(description="held change")
    def held_change(self, obj):
        return usd_exact(obj.held_change_micros) if obj.held_change_micros else ""

    @admin.display(description="balance after")
    def balance_after(self, obj):
        return usd_exact(obj.balance_after_micros)

    def amount_usd(self, obj):
        return usd_exact(obj.amount_micros)

    def held_change_usd(self, obj):
        return usd_exact(obj.held_change_micros)

    def balance_after_usd(self, obj):
        return usd_exact(obj.balance_after_micros)


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


# --- staff money actions: form -> confirmation -> service ---------------------------------


class UsdField(forms.DecimalField):
    """USD with up to six decimals, cleaned to integer micro-dollars."""

    def __init__(self, *, allow_negative: bool = False, **kwargs):
        kwargs.setdefault("max_digits", 14)
        kwargs.setdefault("decimal_places", 6)
        if not allow_negative:
            kwargs.setdefault("min_value", Decimal("0.000001"))
        kwargs.setdefault("help_text", "USD, e.g. 10 or 2.50")
        super().__init__(**kwargs)

    def clean(self, value):
        cleaned = super().clean(value)
        return None if cleaned is None else money.usd_to_micros(cleaned)


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=255, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        error_messages={"required": "A reason is required."},
        help_text="Stored on the ledger entry and in the audit log.",
    )


class GrantCreditForm(ReasonForm):
    amount = UsdField()
    kind = forms.ChoiceField(choices=[(k.value, k.label) for k in staff_actions.STAFF_GRANT_KINDS],
                             initial=GrantKind.ADJUSTMENT)
    expires_at = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional (UTC). Empty: promotional credit expires after the promotion's "
                  "days; other kinds never.")
    field_order = ["amount", "kind", "expires_at", "reason"]

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value


class AdjustForm(ReasonForm):
    amount = UsdField(allow_negative=True,
                      help_text="USD: positive adds credit, negative takes it back "
                                "(never below zero).")
    field_order = ["amount", "reason"]

    def clean_amount(self):
        value = self.cleaned_data.get("amount")
        if value == 0:
            raise forms.ValidationError("An adjustment cannot be zero.")
        return value


class RefundForm(ReasonForm):
    amount = UsdField()
    usage_reference = forms.CharField(
        required=False, max_length=64, label="Usage record (request id)",
        help_text="Optional: the request id of the call being refunded.")
    field_order = ["amount", "usage_reference", "reason"]

    def clean_usage_reference(self):
        value = (self.cleaned_data.get("usage_reference") or "").strip()
        if value and call_charge(request_id=value) is None:
            raise forms.ValidationError(f"No usage record has the request id {value!r}.")
        return value


class ChangeExpiryForm(ReasonForm):
    expires_at = forms.DateTimeField(
        required=False, label="New expiry (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    never = forms.BooleanField(required=False, label="Never expires")
    field_order = ["expires_at", "never", "reason"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("never"):
            cleaned["expires_at"] = None
        elif cleaned.get("expires_at") is None and "expires_at" not in self.errors:
            self.add_error("expires_at", "Give the new expiry, or tick 'Never expires'.")
        return cleaned


GRANT_KIND_FILTER = [("", "All credit left"),
                     *[(k.value, f"{k.label} credit only") for k in GrantKind]]


class UserGrantsReasonForm(ReasonForm):
    grant_kind = forms.ChoiceField(choices=GRANT_KIND_FILTER, required=False,
                                   label="Grants", initial=GrantKind.PROMOTIONAL)
    field_order = ["grant_kind", "reason"]


class UserGrantsExpiryForm(ChangeExpiryForm):
    grant_kind = forms.ChoiceField(choices=GRANT_KIND_FILTER, required=False,
                                   label="Grants", initial=GrantKind.PROMOTIONAL)
    field_order = ["grant_kind", "expires_at", "never", "reason"]


class DecisionForm(forms.Form):
    note = forms.CharField(max_length=255, required=False,
                           widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))


class RejectionForm(forms.Form):
    note = forms.CharField(max_length=255, label="Reason",
                           error_messages={"required": "A reason is required."},
                           widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))


@dataclass(frozen=True)
class MoneyAction:
    name: str
    label: str
    form_class: type[forms.Form]
    perform: Callable[..., StaffAction]
    target: str  # the service's keyword for one target: "user", "grant" or "action"
    kind: str | None = None  # the StaffActionKind whose permission it needs (None: reviewers)

    def call_kwargs(self, data: dict) -> dict:
        mapping = {"amount": "amount_micros", "note": "note", "reason": "reason",
                   "kind": "kind", "expires_at": "expires_at",
                   "usage_reference": "usage_reference", "grant_kind": "grant_kind"}
        return {mapping[k]: v for k, v in data.items() if k in mapping}

    def allowed(self, staff: User) -> bool:
        if self.kind is None:
            return staff_actions.can_review(staff)
        return staff_actions.can_perform(staff, self.kind)


USER_ACTIONS = {a.name: a for a in [
    MoneyAction("grant", "Grant credit", GrantCreditForm, staff_actions.grant_credit, "user",
                StaffActionKind.GRANT),
    MoneyAction("adjust", "Adjust balance", AdjustForm, staff_actions.adjust_balance, "user",
                StaffActionKind.ADJUST),
    MoneyAction("refund", "Refund", RefundForm, staff_actions.refund_credit, "user",
                StaffActionKind.REFUND),
    MoneyAction("revoke_keys", "Revoke API keys", ReasonForm, staff_actions.revoke_api_keys,
                "user", StaffActionKind.REVOKE_KEYS),
    # The grant actions on every grant of the selected users that still has credit.
    MoneyAction("void_all", "Void credit left", UserGrantsReasonForm,
                partial(staff_actions.on_open_grants, do=staff_actions.void_rest_of_grant),
                "user", StaffActionKind.VOID),
    MoneyAction("change_expiry_all", "Change expiry of credit left", UserGrantsExpiryForm,
                partial(staff_actions.on_open_grants, do=staff_actions.change_expiry),
                "user", StaffActionKind.CHANGE_EXPIRY),
    MoneyAction("expire_all", "Expire credit left now", UserGrantsReasonForm,
                partial(staff_actions.on_open_grants, do=staff_actions.expire_now),
                "user", StaffActionKind.EXPIRE_NOW),
]}
GRANT_ACTIONS = {a.name: a for a in [
    MoneyAction("void", "Void the rest of the grant", ReasonForm,
                staff_actions.void_rest_of_grant, "grant", StaffActionKind.VOID),
    MoneyAction("change_expiry", "Change expiry", ChangeExpiryForm, staff_actions.change_expiry,
                "grant", StaffActionKind.CHANGE_EXPIRY),
    MoneyAction("expire_now", "Expire now", ReasonForm, staff_actions.expire_now, "grant",
                StaffActionKind.EXPIRE_NOW),
]}
REVIEW_ACTIONS = {a.name: a for a in [
    MoneyAction("approve", "Approve", DecisionForm, staff_actions.approve, "action"),
    MoneyAction("reject", "Reject", RejectionForm, staff_actions.reject, "action"),
]}


class _Preview(Exception):
    pass


class MoneyActionsMixin:
    """Adds `money/<action>/?ids=1,2` pages and matching bulk actions to a ModelAdmin."""

    money_actions: dict[str, MoneyAction] = {}

    def _url_name(self, view: str) -> str:
        return f"{self.model._meta.app_label}_{self.model._meta.model_name}_{view}"

    def get_urls(self):
        return [
            path("money/<str:action>/", self.admin_site.admin_view(self.money_action_view),
                 name=self._url_name("money_action")),
            *super().get_urls(),
        ]

    def money_action_url(self, action: str, ids: Iterable[int]) -> str:
        return (reverse(f"admin:{self._url_name('money_action')}", kwargs={"action": action})
                + "?ids=" + ",".join(str(i) for i in ids))

    def get_actions(self, request):
        actions = super().get_actions(request)
        for spec in self.money_actions.values():
            if spec.allowed(request.user):
                actions[f"money_{spec.name}"] = (
                    self._bulk_redirect(spec), f"money_{spec.name}", f"{spec.label}…")
        return actions

    def _bulk_redirect(self, spec: MoneyAction):
        def redirect(modeladmin, request, queryset):
            ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: MAX_BULK + 1])
            if len(ids) > MAX_BULK:
                modeladmin.message_user(request, f"Select at most {MAX_BULK} rows.",
                                        messages.ERROR)
                return None
            return HttpResponseRedirect(modeladmin.money_action_url(spec.name, ids))

        return redirect

    def money_targets(self, ids: list[int]):
        return list(self.model._default_manager.filter(pk__in=ids).order_by("pk"))

    def describe_target(self, obj) -> str:
        return str(obj)

    def money_action_view(self, request: HttpRequest, action: str):
        spec = self.money_actions.get(action)
        if spec is None:
            raise PermissionDenied
        if not spec.allowed(request.user):
            raise PermissionDenied
        raw_ids = request.POST.get("ids") if request.method == "POST" else request.GET.get("ids")
        ids = [int(i) for i in (raw_ids or "").split(",") if i.strip().isdigit()][:MAX_BULK]
        targets = self.money_targets(ids)
        if not targets:
            self.message_user(request, "Nothing selected.", messages.WARNING)
            return HttpResponseRedirect(self._money_return_url(request, targets))
        step = request.POST.get("_step", "") if request.method == "POST" else ""
        form = spec.form_class(request.POST if step in ("preview", "confirm") else None)
        confirming = False
        if step in ("preview", "confirm") and form.is_valid():
            kwargs = spec.call_kwargs(form.cleaned_data)
            try:
                with transaction.atomic():
                    done = staff_actions.for_each(targets, spec.perform, target=spec.target,
                                                  staff=request.user, **kwargs)
                    if step == "preview":
                        raise _Preview  # a dry run: checked against the ledger, rolled back
            except _Preview:
                confirming = True
            except CreditError as exc:
                form.add_error(None, str(exc))
            else:
                self._report(request, done)
                return HttpResponseRedirect(self._money_return_url(request, targets))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": spec.label,
            "spec": spec,
            "form": form,
            "targets": [self.describe_target(t) for t in targets],
            "ids": ",".join(str(t.pk) for t in targets),
            "confirming": confirming,
            "summary": _summary(form) if confirming else [],
            "next": request.POST.get("next") or request.GET.get("next", ""),
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/credits/money_action.html", context)

    def _report(self, request, done: list[StaffAction]) -> None:
        for action in done:
            level = messages.WARNING if action.status == StaffActionStatus.PENDING else (
                messages.SUCCESS)
            status = "" if action.status == StaffActionStatus.APPLIED else (
                f" [{action.get_status_display()}]")
            self.message_user(request, f"{action.user}: {action.result}{status}", level)

    def _money_return_url(self, request, targets) -> str:
        nxt = request.POST.get("next") or request.GET.get("next")
        if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
            return nxt
        if len(targets) == 1:
            return reverse(f"admin:{self._url_name('change')}", args=[targets[0].pk])
        return reverse(f"admin:{self._url_name('changelist')}")


def _summary(form: forms.Form) -> list[tuple[str, str]]:
    rows = []
    for name, field in form.fields.items():
        value = form.cleaned_data.get(name)
        if isinstance(field, UsdField) and value is not None:
            shown = f"{money.display_usd(value)} (${money.format_usd(value)})"
        elif isinstance(field, forms.ChoiceField):
            shown = dict(field.choices).get(value, value)
        elif value in (None, ""):
            shown = "—"
        else:
            shown = str(value)
        rows.append((field.label or name.replace("_", " ").capitalize(), shown))
    return rows


# --- grants, holds, the audit ------------------------------------------------------


@admin.register(CreditGrant)
class CreditGrantAdmin(MoneyActionsMixin, ReadOnlyAdmin):
    money_actions = GRANT_ACTIONS
    list_display = ["id", "user", "kind", "amount", "remaining", "held", "granted_at",
                    "expires_at", "voided_at", "promotion_variant", "actor", "description"]
    list_filter = ["kind", GrantStateFilter, UserIdFilter, ("granted_at", admin.DateFieldListFilter),
                   "promotion_variant"]
    search_fields = ["user__email", "description", "source_reference", "idempotency_key"]
    list_select_related = ["user", "actor", "promotion_variant__promotion"]
    date_hierarchy = "granted_at"
    csv_fields = ["id", "user", "kind", "amount_usd", "remaining_usd", "held_usd", "granted_at",
                  "expires_at", "voided_at", "promotion_variant", "actor", "description",
                  "source_reference"]

    @admin.display(description="amount", ordering="amount_micros")
    def amount(self, obj):
        return usd(obj.amount_micros)

    @admin.display(description="remaining", ordering="remaining_micros")
    def remaining(self, obj):
        return usd(obj.remaining_micros)

    @admin.display(description="held")
    def held(self, obj):
        return usd(obj.held_micros) if obj.held_micros else ""

    def amount_usd(self, obj):
        return usd_exact(obj.amount_micros)

    def remaining_usd(self, obj):
        return usd_exact(obj.remaining_micros)

    def held_usd(self, obj):
        return usd_exact(obj.held_micros)

    def money_targets(self, ids):
        return list(CreditGrant.objects.filter(pk__in=ids).select_related("user").order_by("pk"))

    def describe_target(self, grant) -> str:
        expiry = grant.expires_at.isoformat(timespec="minutes") if grant.expires_at else "never"
        return (f"#{grant.pk} {grant.get_kind_display()} for {grant.user.email}: "
                f"{usd(grant.remaining_micros)} left of {usd(grant.amount_micros)}, "
                f"expires {expiry}")


@admin.register(CreditHold)
class CreditHoldAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "status", "amount", "pending_promotion", "captured",
                    "delivered", "reference", "created_at", "journal_at", "settled_at", "swept"]
    list_filter = ["status", UserIdFilter, ("created_at", admin.DateFieldListFilter)]
    search_fields = ["user__email", "reference"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    csv_fields = ["id", "user", "status", "amount_usd", "pending_promotion_usd", "captured_usd",
                  "reference", "created_at", "settled_at"]

    @admin.display(description="amount")
    def amount(self, obj):
        return usd(obj.amount_micros)

    @admin.display(description="against pending promotion")
    def pending_promotion(self, obj):
        return usd(obj.pending_promotion_micros) if obj.pending_promotion_micros else ""

    @admin.display(description="captured")
    def captured(self, obj):
        return usd(obj.captured_micros)

    @admin.display(description="delivered (journal)")
    def delivered(self, obj):
        return f"{usd(obj.delivered_micros)} ({obj.delivered_tokens} tokens)" if obj.journal_at else ""

    def amount_usd(self, obj):
        return usd_exact(obj.amount_micros)

    def pending_promotion_usd(self, obj):
        return usd_exact(obj.pending_promotion_micros)

    def captured_usd(self, obj):
        return usd_exact(obj.captured_micros)


@admin.register(SweepFailure)
class SweepFailureAdmin(ReadOnlyAdmin):
    """Units (a user, a hold) a periodic sweep keeps failing on: it goes on with the others;
    a row goes away by itself once a run succeeds on its unit."""

    list_display = ["sweep", "unit", "consecutive_failures", "first_failed_at", "last_failed_at",
                    "reported_at", "last_error"]
    list_filter = ["sweep"]
    search_fields = ["unit", "last_error"]
    csv_fields = ["sweep", "unit", "consecutive_failures", "first_failed_at", "last_failed_at",
                  "reported_at", "last_error"]


@admin.register(StaffAction)
class StaffActionAdmin(MoneyActionsMixin, ReadOnlyAdmin):
    """The audit view: every staff money action, with its approval."""

    money_actions = REVIEW_ACTIONS
    list_display = ["id", "requested_at", "kind", "status", "user", "amount", "reason",
                    "requested_by", "decided_by", "decided_at", "result"]
    list_filter = ["status", "kind", UserIdFilter, ("requested_at", admin.DateFieldListFilter),
                   ("requested_by", TinyUserFilter), ("decided_by", TinyUserFilter)]
    search_fields = ["user__email", "reason", "requested_by__email", "result"]
    list_select_related = ["user", "requested_by", "decided_by"]
    date_hierarchy = "requested_at"
    readonly_fields = ["review"]
    csv_fields = ["id", "requested_at", "kind", "status", "user", "amount_usd", "grant_id",
                  "grant_kind", "expires_at", "usage_reference", "reason", "requested_by",
                  "decided_by", "decided_at", "decision_note", "result"]

    @admin.display(description="amount")
    def amount(self, obj):
        return usd(obj.amount_micros)

    def amount_usd(self, obj):
        return usd_exact(obj.amount_micros)

    def money_targets(self, ids):
        return list(StaffAction.objects.filter(pk__in=ids).select_related("user", "requested_by")
                    .order_by("pk"))

    def describe_target(self, action) -> str:
        amount = f" {usd(action.amount_micros)}" if action.amount_micros is not None else ""
        return (f"#{action.pk} {action.get_kind_display()}{amount} for {action.user.email}, "
                f"asked by {action.requested_by.email}: “{action.reason}” "
                f"({action.get_status_display()})")

    @admin.display(description="review")
    def review(self, obj):
        if obj.status != StaffActionStatus.PENDING:
            return "—"
        return format_html(
            '<a class="button" href="{}">Approve…</a> <a class="button" href="{}">Reject…</a>',
            self.money_action_url("approve", [obj.pk]), self.money_action_url("reject", [obj.pk]))

    def get_fields(self, request, obj=None):
        return ["review", *[f.name for f in StaffAction._meta.fields]]


# --- promotions ----------------------------------------------------------------------------


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
    class Meta:
        model = Promotion
        fields = ["name", "kind", "is_active", "active_from", "active_to", "amount_usd",
                  "window_seconds", "expiry_days"]


class VariantForm(UsdTermsForm):
    class Meta:
        model = PromotionVariant
        fields = ["name", "weight", "amount_usd", "window_seconds", "expiry_days"]


class PromotionVariantInline(admin.TabularInline):
    model = PromotionVariant
    form = VariantForm
    extra = 0
    fields = ["name", "weight", "amount_usd", "window_seconds", "expiry_days", "assigned"]
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
        today = timezone.now().date()
        start, end, promotion = today - dt.timedelta(days=29), today, None
        if form.is_bound and form.is_valid():
            start = form.cleaned_data["start"] or start
            end = form.cleaned_data["end"] or end
            promotion = form.cleaned_data["promotion"]
        rows = metrics.promotion_metrics(start=start, end=end,
                                         promotion_id=promotion.pk if promotion else None)
        if request.GET.get("format") == "csv":
            response = HttpResponse(content_type="text/csv")
            response["Content-Disposition"] = (
                f'attachment; filename="promotion-metrics-{start}-{end}.csv"')
            writer = csv.writer(response)
            header = list(rows[0].as_row()) if rows else list(
                metrics.VariantMetrics(None, None, "", 0).as_row())
            writer.writerow(header)
            for row in rows:
                writer.writerow(row.as_row().values())
            return response
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


def _table(rows: list[metrics.VariantMetrics]) -> dict:
    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value * 100:.1f}%"

    def secs(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}s"

    header = ["Promotion / variant", "Window", "Sign-ups", "First token in window",
              "Median to first token", "p90 to first token", "Promo granted", "Used (cost)",
              "Expired", "Voided", "Outstanding", "Utilization", "Ran out", "Retained"]
    body = [[
        r.label, f"{r.window_seconds}s", r.signups,
        f"{r.first_token_in_window} ({pct(r.first_token_share)})",
        secs(r.median_seconds_to_first_token), secs(r.p90_seconds_to_first_token),
        usd(r.granted_micros), usd(r.used_micros), usd(r.expired_micros), usd(r.voided_micros),
        usd(r.outstanding_micros), pct(r.utilization), r.ran_out,
        f"{r.retained} ({pct(r.retention)})",
    ] for r in rows]
    return {"header": header, "rows": body}


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
class PromotionAssignmentAdmin(ReadOnlyAdmin):
    list_display = ["user", "promotion", "variant", "assigned_at"]
    list_filter = ["promotion", "variant", ("assigned_at", admin.DateFieldListFilter)]
    search_fields = ["user__email"]
    list_select_related = ["user", "promotion", "variant"]
    csv_fields = ["user_id", "user", "promotion", "variant", "assigned_at"]


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "user", "event", "subject", "emailed_at", "email_error"]
    list_filter = ["event", UserIdFilter, ("created_at", admin.DateFieldListFilter)]
    search_fields = ["user__email", "subject", "key"]
    list_select_related = ["user"]
    csv_fields = ["id", "created_at", "user", "event", "key", "subject", "emailed_at",
                  "email_error"]


def grant_action_links(grant: CreditGrant) -> str:
    """Links to the per-grant staff actions (the pages check permissions)."""
    if grant.voided_at is not None:
        return "voided"
    base = "admin:credits_creditgrant_money_action"
    links = [(reverse(base, kwargs={"action": name}) + f"?ids={grant.pk}", spec.label)
             for name, spec in GRANT_ACTIONS.items()]
    return format_html_join(" · ", '<a href="{}">{}</a>', links)


