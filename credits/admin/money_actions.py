"""Staff money actions: form -> confirmation (a dry run) -> credits.staff_actions.

The actions are declared as a table (MoneyAction); MoneyActionsMixin gives a ModelAdmin
their pages and bulk actions, and turns credits.exceptions into form errors. The audit
of every staff action, with its approval, is the StaffAction admin here.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html_join
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


class InternalReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=255, label="Internal reason",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        error_messages={"required": "A reason is required."},
        help_text="Staff and the audit only (the ledger entry's internal reason, the audit "
                  "log); never shown to the customer.",
    )


class ReasonForm(InternalReasonForm):
    """An internal reason, and the note the customer reads."""

    customer_note = forms.CharField(
        max_length=255, required=False, label="Note to the customer",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Optional: what the customer reads in their credit history and in the "
                  "email we send them.")

    def set_customer_default(self, default: str) -> None:
        field = self.fields["customer_note"]
        field.widget.attrs["placeholder"] = default
        field.help_text = (f"{field.help_text} Empty: “{default}”.")


class GrantCreditForm(ReasonForm):
    amount = UsdField()
    kind = forms.ChoiceField(choices=[(k.value, k.label) for k in staff_actions.STAFF_GRANT_KINDS],
                             initial=GrantKind.ADJUSTMENT)
    expires_at = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional (UTC). Empty: promotional credit expires after the promotion's "
                  "days; other kinds never.")
    field_order = ["amount", "kind", "expires_at", "reason", "customer_note"]

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value


class AdjustForm(ReasonForm):
    amount = UsdField(allow_negative=True,
                      help_text="USD: positive adds credit, negative takes it back "
                                "(never below zero).")
    field_order = ["amount", "reason", "customer_note"]

    def clean_amount(self):
        value = self.cleaned_data.get("amount")
        if value == 0:
            raise forms.ValidationError("An adjustment cannot be zero.")
        return value


class RefundForm(ReasonForm):
    usage_reference = forms.CharField(
        required=False, max_length=64, label="Call (request id)",
        help_text="Pick one of the customer's recent calls above (its charge is prefilled), or "
                  "give a request id; empty: a refund not tied to a call.")
    amount = UsdField()
    field_order = ["usage_reference", "amount", "reason", "customer_note"]

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
    field_order = ["expires_at", "never", "reason", "customer_note"]

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
    field_order = ["grant_kind", "reason", "customer_note"]


class UserGrantsExpiryForm(ChangeExpiryForm):
    grant_kind = forms.ChoiceField(choices=GRANT_KIND_FILTER, required=False,
                                   label="Grants", initial=GrantKind.PROMOTIONAL)
    field_order = ["grant_kind", "expires_at", "never", "reason", "customer_note"]


class DecisionForm(forms.Form):
    note = forms.CharField(max_length=255, required=False, label="Internal note",
                           help_text="Staff and the audit only.",
                           widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))


class RejectionForm(forms.Form):
    note = forms.CharField(max_length=255, label="Internal reason",
                           help_text="Staff and the audit only.",
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
                   "customer_note": "customer_note",
                   "kind": "kind", "expires_at": "expires_at",
                   "usage_reference": "usage_reference", "grant_kind": "grant_kind"}
        return {mapping[k]: v for k, v in data.items() if k in mapping}

    def allowed(self, staff: User) -> bool:
        if self.kind is None:
            return staff_actions.can_review(staff)
        return staff_actions.can_perform(staff, self.kind)

    @property
    def customer_default(self) -> str:
        return staff_actions.CUSTOMER_NOTE_DEFAULTS.get(self.kind, "") if self.kind else ""

    def make_form(self, data=None, initial=None) -> forms.Form:
        form = self.form_class(data, initial=initial or {})
        if isinstance(form, ReasonForm) and self.customer_default:
            form.set_customer_default(self.customer_default)
        return form


USER_ACTIONS = {a.name: a for a in [
    MoneyAction("grant", "Grant credit", GrantCreditForm, staff_actions.grant_credit, "user",
                StaffActionKind.GRANT),
    MoneyAction("adjust", "Adjust balance", AdjustForm, staff_actions.adjust_balance, "user",
                StaffActionKind.ADJUST),
    MoneyAction("refund", "Refund", RefundForm, staff_actions.refund_credit, "user",
                StaffActionKind.REFUND),
    MoneyAction("revoke_keys", "Revoke API keys", InternalReasonForm,
                staff_actions.revoke_api_keys,
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
        bound = step in ("preview", "confirm")
        form = spec.make_form(request.POST if bound else None,
                              initial=None if bound else self.money_initial(spec, request, targets))
        confirming = False
        effects: list[staff_actions.AccountEffect] = []
        # The confirmation page's one-time token is the submission's idempotency key: the
        # same page confirmed twice (a double click, a browser retry) applies once and shows
        # the first result. A confirm without a token (an old page) gets a key of its own.
        token = request.POST.get("_token", "") if step == "confirm" else ""
        if not _TOKEN.fullmatch(token):
            token = secrets.token_urlsafe(16)
        # What this staff member cannot do is not offered (e.g. approving their own request).
        refused = self.money_refusals(spec, request.user, targets)
        if bound and form.is_valid():
            kwargs = spec.call_kwargs(form.cleaned_data)
            try:
                if step == "preview":
                    # A dry run with every check, rolled back: what each account will look like.
                    effects = staff_actions.preview(targets, spec.perform, target=spec.target,
                                                    staff=request.user, idempotency_key=token,
                                                    **kwargs)
                    confirming = True
                else:
                    done = staff_actions.for_each(targets, spec.perform, target=spec.target,
                                                  staff=request.user, idempotency_key=token,
                                                  **kwargs)
                    self._report(request, done)
                    return HttpResponseRedirect(self._money_return_url(request, targets))
            except CreditError as exc:
                form.add_error(None, str(exc))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": spec.label,
            "spec": spec,
            "form": form,
            "targets": [self.describe_target(t) for t in targets],
            "ids": ",".join(str(t.pk) for t in targets),
            "confirming": confirming,
            "refused": refused,
            "token": token if confirming else "",
            "summary": _summary(form, spec) if confirming else [],
            "effects": [_effect_row(e) for e in effects],
            "waiting": [e for e in effects if e.waits],
            "recent_calls": None,
            "grant_kind_note": _expiry_note(spec, form, effects) if confirming else "",
            "next": request.POST.get("next") or request.GET.get("next", ""),
            "media": self.media + form.media,
            **self.money_extra_context(spec, request, targets),
        }
        return TemplateResponse(request, "admin/credits/money_action.html", context)

    def money_initial(self, spec: MoneyAction, request, targets) -> dict:
        """The form's first values (a refund of a call picked from the list: its charge)."""
        return {}

    def money_extra_context(self, spec: MoneyAction, request, targets) -> dict:
        return {}

    def money_refusals(self, spec: MoneyAction, staff: User, targets) -> list[str]:
        """Why `staff` cannot take this action on these targets (empty: they can)."""
        return []

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


def _summary(form: forms.Form, spec: MoneyAction) -> list[tuple[str, str]]:
    rows = []
    for name, field in form.fields.items():
        value = form.cleaned_data.get(name)
        if name == "customer_note" and not value:
            shown = f"{spec.customer_default} (the default)"
        elif name == "expires_at" and value is None and "never" not in form.fields:
            shown = "The kind's default (the real date is below)"
        elif isinstance(field, UsdField) and value is not None:
            shown = f"{money.display_usd(value)} (${money.format_usd(value)})"
        elif isinstance(field, forms.ChoiceField):
            shown = dict(field.choices).get(value, value)
        elif value in (None, ""):
            shown = "—"
        else:
            shown = str(value)
        rows.append((field.label or name.replace("_", " ").capitalize(), shown))
    return rows


def _when(moment) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _effect_row(effect: staff_actions.AccountEffect) -> dict:
    expiries = [("never expires" if e is None else f"expires {_when(e)}")
                for e in effect.grant_expiries]
    return {
        "user": effect.user.email,
        "balance_before": usd(effect.balance_before_micros),
        "balance_after": usd(effect.balance_after_micros),
        "available_before": usd(effect.available_before_micros),
        "available_after": usd(effect.available_after_micros),
        "changed": (effect.balance_after_micros != effect.balance_before_micros
                    or effect.available_after_micros != effect.available_before_micros),
        "expiries": "; ".join(expiries),
        "results": effect.results,
        "waits": effect.waits,
        "when": (f"Waits for a second approver ({effect.waits_for})" if effect.waits
                 else "Applied when you confirm"),
    }


def _expiry_note(spec: MoneyAction, form: forms.Form, effects) -> str:
    """A grant that waits for approval and has no expiry of its own gets it counted from the
    approval."""
    if (spec.kind == StaffActionKind.GRANT and any(e.waits for e in effects)
            and not form.cleaned_data.get("expires_at")
            and any(x is not None for e in effects for x in e.grant_expiries)):
        return ("The expiry shown is counted from now; it will be counted from the moment "
                "the grant is approved.")
    return ""


def grant_action_links(grant: CreditGrant, staff: User | None = None,
                       now: dt.datetime | None = None) -> str:
    """Links to the per-grant staff actions this staff member may take on this grant (none
    on a voided, expired or used-up grant)."""
    now = now or timezone.now()
    if grant.voided_at is not None:
        return "voided"
    if grant.expires_at is not None and grant.expires_at <= now:
        return "expired"
    if grant.remaining_micros == 0:
        return "used up"
    base = "admin:credits_creditgrant_money_action"
    links = [(reverse(base, kwargs={"action": name}) + f"?ids={grant.pk}", spec.label)
             for name, spec in GRANT_ACTIONS.items() if staff is None or spec.allowed(staff)]
    return format_html_join(" · ", '<a href="{}">{}</a>', links) if links else "—"


# --- the audit ---------------------------------------------------------------------------


# The staff member viewing a page, for columns that offer only what they can do (a context
# variable: the ModelAdmin is shared by every request).
_viewer: contextvars.ContextVar[User | None] = contextvars.ContextVar("console_viewer",
                                                                      default=None)


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
    search_fields = ["user__email", "reason", "customer_note", "requested_by__email",
                     "decision__result"]
    list_select_related = ["user", "requested_by", "decision__decided_by"]
    date_hierarchy = "requested_at"
    derived_fields = ["status", "decided_by", "decided_at", "decision_note", "result", "grant"]
    readonly_fields = ["review", *derived_fields]
    csv_fields = ["id", "requested_at", "kind", "status", "user", "amount_usd", "grant_id",
                  "grant_kind", "expires_at", "usage_reference", "reason", "customer_note",
                  "requested_by",
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

    def money_refusals(self, spec, staff, targets) -> list[str]:
        refusals = []
        for action in targets:
            if spec.name == "approve":
                why = staff_actions.may_decide(action=action, staff=staff)
            elif action.decided is not None:
                why = f"It is already {action.decided.outcome.lower()}."
            elif action.requested_by_id != staff.pk and not staff_actions.can_perform(
                    staff, action.kind, action.amount_micros):
                why = "You do not have the permission this action needs."
            else:
                why = ""
            if why:
                refusals.append(f"#{action.pk}: {why}")
        return refusals

    def changelist_view(self, request, extra_context=None):
        _viewer.set(request.user)  # the review column offers what this viewer can do
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        _viewer.set(request.user)
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="review")
    def review(self, obj):
        """Only the decisions this staff member can take: the requester is offered a
        withdrawal, never an approval."""
        if obj.status != StaffActionStatus.PENDING:
            return "—"
        staff = _viewer.get()
        buttons = []
        if staff is not None and not staff_actions.may_decide(action=obj, staff=staff):
            buttons.append((self.money_action_url("approve", [obj.pk]), "Approve…"))
        if staff is not None and (obj.requested_by_id == staff.pk or staff_actions.can_perform(
                staff, obj.kind, obj.amount_micros)):
            label = "Withdraw…" if obj.requested_by_id == staff.pk else "Reject…"
            buttons.append((self.money_action_url("reject", [obj.pk]), label))
        if not buttons:
            return "Waits for another staff member"
        return format_html_join(" ", '<a class="button" href="{}">{}</a>', buttons)

    def get_fields(self, request, obj=None):
        return ["review", *[f.name for f in StaffAction._meta.fields], *self.derived_fields]
