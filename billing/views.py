"""The billing dashboard and the ledger's CSV export (thin doors over the selectors)."""

from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import close_old_connections
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from accounts.forms import ApiKeyForm
from accounts.views import NEW_KEY_SECRET_KEY
from billing import selectors
from billing.charts import PHONE_CHAR_WIDTH, PHONE_HEIGHT, PHONE_WIDTH, spend_chart
from credits import money
from credits.exports import csv_writer
from credits.notifications import recent_notifications
from credits.promotion.milestones import milestone_progress
from credits.promotion.referrals import referral_summary
from credits.promotion.verification import pending_verification
from credits.selectors import get_user_credits
from inference.services import ledger_runner

HISTORY_PAGE_SIZE = 25


@login_required
def dashboard(request):
    user = request.user
    now = timezone.now()
    credits = get_user_credits(user=user, now=now)
    spend = selectors.daily_spend_by_model(user=user, now=now)
    history_filter = selectors.history_filter(request.GET.get("type", ""))
    entry_type = history_filter.value
    page = Paginator(selectors.money_history(user=user, entry_type=entry_type),
                     HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    new_key = request.session.pop(NEW_KEY_SECRET_KEY, None)
    return render(request, "billing/dashboard.html", {
        "credits": credits,
        # The hero is a headline (cents, rounded down); the exact figure sits beneath it.
        "balance": money.headline_usd(credits.balance_micros),
        "balance_exact": money.display_usd(credits.balance_micros),
        "balance_is_rounded": credits.balance_micros % 10_000 != 0,
        "available": money.display_usd(credits.available_micros),
        "held": money.display_usd(credits.held_micros),
        "promotional": money.display_usd(credits.promotional_micros),
        "promo_expiry": _promo_expiry(credits, now),
        "alerts": selectors.dashboard_alerts(credits, now=now),
        "verification": pending_verification(user=user, now=now),
        "grant_rows": [_grant_row(g, now) for g in credits.grants],
        "history_rows": [_entry_row(e) for e in page.object_list],
        "history_summarized": not entry_type,
        "page": page,
        "entry_type": entry_type,
        "history_filters": selectors.HISTORY_FILTERS,
        "type_query": urlencode({"type": entry_type}) if entry_type else "",
        "chart": spend_chart(spend),
        "chart_phone": spend_chart(spend, width=PHONE_WIDTH, height=PHONE_HEIGHT, max_ticks=2,
                                   char_width=PHONE_CHAR_WIDTH, day_step=14),
        "usage": [_usage_row(r) for r in selectors.recent_usage(user=user)],
        "api_keys": selectors.api_keys(user=user),
        "new_key": new_key,
        "key_form": ApiKeyForm(),
        "buy_url": reverse("billing:buy"),
        "notifications": recent_notifications(user=user, limit=5),
        **promotion_cards(request, now=now),
    })


def promotion_cards(request, *, now) -> dict:
    """The milestones and the referral card (templates/billing/_milestones.html and
    _referral_card.html), for the dashboard and the onboarding page."""
    summary = referral_summary(user=request.user)
    link = request.build_absolute_uri(reverse("onboarding:signup")) + "?ref=" + summary.code
    return {"milestones": milestone_progress(user=request.user, now=now),
            "referral": summary, "referral_link": link}


class _Echo:
    """A file-like object whose write returns the line, for streaming csv."""

    def write(self, value):
        return value


CSV_HEADER = ["time", "type", "type_label", "amount_usd", "balance_after_usd", "held_change_usd",
              "description", "reference", "grant_id", "entry_id"]


@login_required
def history_csv(request):
    """The whole ledger, holds included (the audit trail), or one filter of it, as CSV sent a
    page of rows at a time; `type` is the raw entry type, `type_label` what the dashboard
    calls it. Under ASGI the body is an async generator whose pages are read on the
    process's bounded pool of database steps, each handing its connection back, so a slow
    download holds no connection and Django never reads the whole ledger into memory before
    the first byte (what it does with a synchronous iterator under ASGI)."""
    user = request.user
    entry_type = selectors.history_filter(request.GET.get("type", "")).value
    writer = csv_writer(_Echo())  # formula-looking cells are quoted (credits.exports)

    def page_after(after):
        return selectors.history_entries_page(user=user, entry_type=entry_type, after=after)

    def lines(page) -> str:
        return "".join(writer.writerow([
            e.created_at.isoformat(), e.entry_type, selectors.entry_label(e.entry_type),
            money.format_usd(e.amount_micros),
            money.format_usd(e.balance_after_micros), money.format_usd(e.held_change_micros),
            e.customer_description, e.reference, e.grant_id or "", e.pk,
        ]) for e in page)

    def pages():
        yield writer.writerow(CSV_HEADER)
        page = page_after(None)
        while page:
            yield lines(page)
            page = page_after(page[-1]) if len(page) == selectors.HISTORY_CSV_PAGE_ROWS else []

    async def pages_async():
        # The session and the user were read on the request's thread: its connection goes
        # back now, not once the last byte has left.
        await sync_to_async(close_old_connections)()
        run = ledger_runner(asgi=True)  # the process's bounded pool of short database steps
        yield writer.writerow(CSV_HEADER)
        page = await run(page_after, None)
        while page:
            yield lines(page)
            page = (await run(page_after, page[-1])
                    if len(page) == selectors.HISTORY_CSV_PAGE_ROWS else [])

    suffix = f"-{entry_type.lower()}" if entry_type else ""
    body = pages_async() if isinstance(request, ASGIRequest) else pages()
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="tokenbank-ledger{suffix}-{timezone.now():%Y%m%d}.csv"'
    )
    return response


def signed_usd(micros: int) -> str:
    """For people, with its sign: "+$10.00", "-$0.000135"."""
    return ("+" if micros > 0 else "-" if micros < 0 else "") + money.display_usd(abs(micros))


def _entry_row(entry) -> dict:
    if not isinstance(entry, selectors.HistoryRow):
        entry = selectors.HistoryRow.of(entry)
    amount = signed_usd(entry.amount_micros)
    if entry.amount_micros == 0 and entry.held_change_micros:
        amount = f"held {signed_usd(entry.held_change_micros)}"
    return {
        "calls": entry.calls,
        "day": entry.day,
        "created_at": entry.created_at,
        "type": entry.entry_type,
        "type_display": selectors.entry_label(entry.entry_type),
        "type_query": urlencode({"start": entry.day.isoformat(), "end": entry.day.isoformat()})
        if entry.day else "",
        "amount": amount,
        "positive": entry.amount_micros > 0,
        "balance_after": money.display_usd(entry.balance_after_micros),
        "description": entry.description,
    }


def _grant_row(grant, now) -> dict:
    if grant.voided_at is not None:
        state = "voided"
    elif grant.expires_at is not None and grant.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return {
        "kind": grant.kind,
        "kind_display": grant.get_kind_display(),
        "amount": money.display_usd(grant.amount_micros),
        "remaining": money.display_usd(grant.remaining_micros),
        "granted_at": grant.granted_at,
        "expires_at": grant.expires_at,
        "expires_in": _days_label(grant.expires_at - now) if grant.expires_at else "",
        "state": state,
        "description": grant.customer_description,  # never a staff member's internal reason
    }


def _days_label(delta) -> str:
    days = int(delta.total_seconds() / 86400 + 0.5)  # 29.9997 days reads "in 30 days"
    if days >= 1:
        return f"in {days} day{'s' if days != 1 else ''}"
    hours = max(0, int(delta.total_seconds() // 3600))
    return f"in {hours} hour{'s' if hours != 1 else ''}" if hours else "within the hour"


def _usage_row(record):
    record.cost_display = money.display_usd(record.cost_micros)
    return record


def _promo_expiry(credits, now):
    expiries = [g.expires_at for g in credits.grants
                if g.kind == "PROMOTIONAL" and g.remaining_micros > 0 and g.is_usable_at(now)
                and g.expires_at]
    return min(expiries) if expiries else None
