"""Buying credit: the package picker, the TEST MODE payment page and the success page.

Thin doors onto billing.services; none of them credits anything itself.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from billing import selectors, services
from billing.models import CreditPackage, Purchase, PurchaseStatus
from billing.providers import in_test_mode
from billing.purchases import get_purchase
from credits.money import display_usd, format_usd, usd_to_micros
from credits.selectors import get_user_credits


class BuyForm(forms.Form):
    package = forms.ModelChoiceField(
        queryset=CreditPackage.objects.filter(is_active=True), required=False
    )
    amount = forms.DecimalField(
        required=False, max_digits=12, decimal_places=2, label="Custom amount (USD)"
    )

    def clean(self):
        data = super().clean()
        if data.get("package") is None and data.get("amount") is None:
            raise forms.ValidationError("Choose a package or enter an amount.")
        return data


def _own_purchase(request: HttpRequest, purchase_id: uuid.UUID) -> Purchase:
    purchase = get_purchase(user=request.user, purchase_id=purchase_id)
    if purchase is None:
        raise Http404("No such purchase.")
    return purchase


@login_required
@require_http_methods(["GET", "POST"])
def buy(request: HttpRequest) -> HttpResponse:
    form = BuyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        amount: Decimal | None = form.cleaned_data["amount"]
        try:
            _, checkout = services.start_checkout(
                user=request.user,
                site_url=request.build_absolute_uri("/"),
                package=form.cleaned_data["package"],
                amount_micros=usd_to_micros(amount) if amount is not None else None,
            )
        except services.PurchaseRefused as exc:
            form.add_error(None, str(exc))
        else:
            return redirect(checkout.redirect_url)
    if request.GET.get("cancelled"):
        messages.info(request, "Payment cancelled: nothing was charged.")
    return render(
        request,
        "billing/buy.html",
        {
            "form": form,
            "offers": selectors.package_offers(CreditPackage.objects.filter(is_active=True)),
            "limits": services.purchase_limits(),
            "test_mode": in_test_mode(),
        },
        status=400 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def checkout_test(request: HttpRequest, purchase_id: uuid.UUID) -> HttpResponse:
    purchase = _own_purchase(request, purchase_id)
    if not purchase.is_test or not in_test_mode():
        raise Http404("Test payments are switched off.")
    if request.method == "POST":
        paid = request.POST.get("action") == "confirm"
        try:
            services.answer_test_checkout(purchase=purchase, user=request.user, paid=paid)
        except services.PurchaseRefused as exc:
            messages.error(request, str(exc))
        return redirect("billing:purchase", purchase_id=purchase.pk)
    return render(request, "billing/checkout_test.html", {"purchase": purchase})


@login_required
@require_GET
def purchase_detail(request: HttpRequest, purchase_id: uuid.UUID) -> HttpResponse:
    """Where the provider sends the buyer back: pending until the payment event lands."""
    purchase = _own_purchase(request, purchase_id)
    return render(
        request,
        "billing/success.html",
        {
            "purchase": purchase,
            "balance_display": display_usd(get_user_credits(user=request.user).balance_micros),
            "statuses": PurchaseStatus,
        },
    )


@login_required
@require_GET
def purchase_status(request: HttpRequest, purchase_id: uuid.UUID) -> JsonResponse:
    """Polled by the success page."""
    purchase = _own_purchase(request, purchase_id)
    return JsonResponse(
        {
            "id": str(purchase.pk),
            "status": purchase.status,
            "amount": format_usd(purchase.amount_micros),
            "balance": format_usd(get_user_credits(user=request.user).balance_micros),
        }
    )

