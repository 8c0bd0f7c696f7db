"""The usage page (/billing/usage/) and its CSV, and the hand-written API docs (/docs/):
thin doors over billing.selectors."""

import datetime as dt
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from billing import selectors
from billing.charts import PHONE_CHAR_WIDTH, PHONE_HEIGHT, PHONE_WIDTH, spend_chart
from billing.labels import date_label
from credits import money
from credits.exports import csv_writer

DEFAULT_DAYS = 30
MAX_DAYS = 366
PRESETS = ((7, "7 days"), (30, "30 days"), (90, "90 days"))


class UsageFilterForm(forms.Form):
    start = forms.DateField(required=False, label="From",
                            widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    group = forms.ChoiceField(required=False, label="Group by",
                              choices=[(k, label) for k, (label, _c) in selectors.USAGE_GROUPS.items()])

    def __init__(self, data, *, today: dt.date):
        super().__init__(data)
        self.today = today

    def clean(self):
        cleaned = super().clean()
        end = cleaned.get("end") or self.today
        start = cleaned.get("start") or end - dt.timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise forms.ValidationError("The start date is after the end date.")
        if (end - start).days + 1 > MAX_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_DAYS} days.")
        cleaned.update(start=start, end=end, group=cleaned.get("group") or "all")
        return cleaned


def _range(request) -> tuple[UsageFilterForm, dt.date, dt.date, str]:
    """The form and the range it asks for; the last 30 days when it asks for nothing valid."""
    today = timezone.now().astimezone(dt.UTC).date()
    form = UsageFilterForm(request.GET or None, today=today)
    if form.is_bound and form.is_valid():
        return form, form.cleaned_data["start"], form.cleaned_data["end"], form.cleaned_data["group"]
    return form, today - dt.timedelta(days=DEFAULT_DAYS - 1), today, "all"


@login_required
def usage(request):
    form, start, end, group = _range(request)
    report = selectors.usage_report(user=request.user, start=start, end=end, group=group)
    spend = selectors.spend_between(user=request.user, start=start, end=end)
    n = len(spend.days)
    period = f"{date_label(start)} to {date_label(end)}"
    query = {"start": start.isoformat(), "end": end.isoformat(), "group": report.group}
    today = timezone.now().astimezone(dt.UTC).date()
    status = 400 if form.is_bound and not form.is_valid() else 200
    return render(request, "billing/usage.html", {
        "form": form,
        "report": report,
        "rows": [_row(r) for r in report.rows],
        "total_cost": money.display_usd(report.cost_micros),
        "period": period,
        "days": n,
        "chart": spend_chart(spend, day_step=max(1, -(-n // 5)), period=f"from {period}"),
        "chart_phone": spend_chart(spend, width=PHONE_WIDTH, height=PHONE_HEIGHT, max_ticks=2,
                                   char_width=PHONE_CHAR_WIDTH, day_step=max(1, -(-n // 3)),
                                   period=f"from {period}"),
        "groups": [(k, label) for k, (label, _c) in selectors.USAGE_GROUPS.items()],
        "group_tabs": [(k, label, urlencode({**query, "group": k}))
                       for k, (label, _c) in selectors.USAGE_GROUPS.items()],
        "group_label": selectors.USAGE_GROUPS[report.group][0],
        "presets": [(label, urlencode({"start": (today - dt.timedelta(days=d - 1)).isoformat(),
                                       "end": today.isoformat(), "group": report.group}),
                     start == today - dt.timedelta(days=d - 1) and end == today)
                    for d, label in PRESETS],
        "csv_query": urlencode(query),
    }, status=status)


def _row(r: selectors.UsageRow) -> dict:
    return {"day": r.day, "model_id": r.model_id, "key_label": r.key_label, "requests": r.requests,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "cost": money.display_usd(r.cost_micros)}


class _Echo:
    def write(self, value):
        return value


@login_required
def usage_csv(request):
    """The usage page's rows as CSV, exact micro-dollars; user-named cells (API key names) are
    written spreadsheet-safe (credits.exports)."""
    _form, start, end, group = _range(request)
    report = selectors.usage_report(user=request.user, start=start, end=end, group=group)
    writer = csv_writer(_Echo())
    header = {"day": ["day"], "model": ["model"], "key": ["api_key"]}

    def rows():
        yield writer.writerow([h for c in report.columns for h in header[c]]
                              + ["requests", "prompt_tokens", "completion_tokens", "cost_usd"])
        for r in report.rows:
            cells = {"day": [r.day.isoformat() if r.day else ""], "model": [r.model_id],
                     "key": [r.key_label]}
            yield writer.writerow([v for c in report.columns for v in cells[c]]
                                  + [r.requests, r.prompt_tokens, r.completion_tokens,
                                     money.format_usd(r.cost_micros)])

    # The report is already in memory (one row per group): sent whole, not streamed.
    response = HttpResponse("".join(rows()), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="tokenbank-usage-{start:%Y%m%d}-{end:%Y%m%d}.csv"')
    return response


def api_docs(request):
    """The hand-written guide for API developers (quickstart, auth, errors, headers)."""
    models = selectors.model_price_list()
    demo = next((m.id for m in models if m.id == "demo-small"), models[0].id if models else "demo-small")
    return render(request, "docs/api.html", {
        "base_url": request.build_absolute_uri("/v1"),
        "demo_model": demo,
        "models": models,
        "rate_limit": getattr(settings, "RATE_LIMIT_REQUESTS_PER_MINUTE", 0),
        "buy_url": request.build_absolute_uri(reverse("billing:buy")),
        "keys_url": reverse("billing:dashboard") + "#keys",
    })
