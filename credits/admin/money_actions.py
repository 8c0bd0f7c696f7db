"""Staff money actions: form -> confirmation (a dry run) -> credits.staff_actions.

The actions are declared as a table (MoneyAction); MoneyActionsMixin gives a ModelAdmin
their pages and bulk actions, and turns credits.exceptions into form errors. The audit
of every staff action, with its approval, is the StaffAction admin here.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.models import User
from credits import money, staff_actions
from credits.admin.toolkit import (
    ExportableHistoryAdmin,
    TinyUserFilter,
    UserIdFilter,
    money_column,
    usd,
)
from credits.exceptions import CreditError
from credits.models import CreditGrant, GrantKind, StaffAction, StaffActionKind, StaffActionStatus
from credits.selectors import call_charge

MAX_BULK = 500
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")

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
        # The confirmation page's one-time token is the submission's idempotency key: the
        # same page confirmed twice (a double click, a browser retry) applies once and shows
        # the first result. A confirm without a token (an old page) gets a key of its own.
        token = request.POST.get("_token", "") if step == "confirm" else ""
        if not _TOKEN.fullmatch(token):
            token = secrets.token_urlsafe(16)
        if step in ("preview", "confirm") and form.is_valid():
            kwargs = spec.call_kwargs(form.cleaned_data)
            try:
                with transaction.atomic():
                    done = staff_actions.for_each(targets, spec.perform, target=spec.target,
                                                  staff=request.user, idempotency_key=token,
                                                  **kwargs)
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
            "token": token if confirming else "",
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


def grant_action_links(grant: CreditGrant) -> str:
    """Links to the per-grant staff actions (the pages check permissions)."""
    if grant.voided_at is not None:
        return "voided"
    base = "admin:credits_creditgrant_money_action"
    links = [(reverse(base, kwargs={"action": name}) + f"?ids={grant.pk}", spec.label)
             for name, spec in GRANT_ACTIONS.items()]
    return format_html_join(" · ", '<a href="{}">{}</a>', links)


# --- the audit ---------------------------------------------------------------------------


class StatusFilter(admin.SimpleListFilter):
    """The status is derived from the decision rows; `?status__exact=PENDING` lists the
    requests awaiting approval, as when it was a column."""

    title = "status"
    parameter_name = "status__exact"

    def lookups(self, request, model_admin):
        return StaffActionStatus.choices

    def queryset(self, request, queryset):
        match self.value():
            case StaffActionStatus.PENDING:
                return queryset.pending()
            case StaffActionStatus.APPLIED | StaffActionStatus.REJECTED as outcome:
                return queryset.filter(decision__outcome=outcome)
        return queryset


@admin.register(StaffAction)
class StaffActionAdmin(MoneyActionsMixin, ExportableHistoryAdmin):
    """The audit view: every staff money action as requested, with its decision."""

    money_actions = REVIEW_ACTIONS
    list_display = ["id", "requested_at", "kind", "status", "user", "amount", "reason",
                    "requested_by", "decided_by", "decided_at", "result"]
    list_filter = [StatusFilter, "kind", UserIdFilter, ("requested_at", admin.DateFieldListFilter),
                   ("requested_by", TinyUserFilter), ("decision__decided_by", TinyUserFilter)]
    search_fields = ["user__email", "reason", "requested_by__email", "decision__result"]
    list_select_related = ["user", "requested_by", "decision__decided_by"]
    date_hierarchy = "requested_at"
    derived_fields = ["status", "decided_by", "decided_at", "decision_note", "result", "grant"]
    readonly_fields = ["review", *derived_fields]
    csv_fields = ["id", "requested_at", "kind", "status", "user", "amount_usd", "grant_id",
                  "grant_kind", "expires_at", "usage_reference", "reason", "requested_by",
                  "approval_reason", "decided_by", "decided_at", "decision_note", "result"]

    amount = money_column("amount_micros")
    amount_usd = money_column("amount_micros", exact=True)

    @admin.display(description="status")
    def status(self, obj):
        return obj.get_status_display()

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("decision")

    def money_targets(self, ids):
        return list(StaffAction.objects.filter(pk__in=ids)
                    .select_related("user", "requested_by", "decision").order_by("pk"))

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
        return ["review", *[f.name for f in StaffAction._meta.fields], *self.derived_fields]
