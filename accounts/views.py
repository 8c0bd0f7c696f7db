"""Web pages of the accounts app: landing, sign-up, onboarding and API keys (thin doors)."""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts import services
from accounts.forms import ApiKeyForm, SignupForm
from accounts.models import ApiKey
from billing import selectors as billing_selectors
from credits import abuse, money
from credits.promotions import live_promotion, settings_terms, terms_for
from credits.selectors import get_user_credits

# Secrets wait in the session only until a page has shown them once.
ONBOARDING_SECRET_KEY = "onboarding_api_key_secret"
NEW_KEY_SECRET_KEY = "new_api_key_secret"


def _offer_context() -> dict:
    """The first-token offer a new sign-up joins now (none when no promotion is live)."""
    promotion = live_promotion()
    terms = terms_for(promotion, None) if promotion is not None else settings_terms()
    return {
        "offer_active": promotion is not None and terms.amount_micros > 0,
        "offer_amount_display": money.display_usd(terms.amount_micros, places=0),
        "window_label": _window_label(terms.window_seconds),
        "expiry_days": terms.expiry_days,
    }


def landing(request):
    return render(request, "landing.html", {
        "models": billing_selectors.model_price_list(),
        **_offer_context(),
    })


def signup(request):
    if request.user.is_authenticated:
        return redirect("accounts:onboarding")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        registered = form.save(client_ip=abuse.client_ip(request))
        if registered is not None:
            user, _key, secret = registered
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[ONBOARDING_SECRET_KEY] = secret
            return redirect("accounts:onboarding")
    return render(request, "registration/signup.html", {"form": form, **_offer_context()})


@login_required
def onboarding(request):
    user = request.user
    secret = request.session.pop(ONBOARDING_SECRET_KEY, None)
    credits = get_user_credits(user=user)
    key = ApiKey.objects.active().filter(user=user).first()
    models = billing_selectors.model_price_list()
    demo_model = next((m.id for m in models if m.id == "demo-small"), models[0].id if models else "")
    first_token = user.first_token_at is not None
    state = _promotion_state(credits.promotion, first_token)
    buy_url = _buy_url()
    return render(request, "accounts/onboarding.html", {
        "onboarding_config": {
            "state": state,
            "firstToken": first_token,
            # A small page of entries keeps the 2-second poll cheap.
            "creditsUrl": "/api/credits?page_size=5",
            "completionsUrl": "/v1/chat/completions",
            "buyUrl": buy_url,
        },
        "credits": credits,
        "promotion_state": state,
        "api_key": key,
        "secret": secret,
        "snippet_key": secret or "YOUR_API_KEY",
        "base_url": request.build_absolute_uri("/v1"),
        "models": models,
        "demo_model": demo_model,
        "has_key": ApiKey.objects.filter(user=user).exists(),
        "first_token": first_token,
        "window_label": _window_label(
            (credits.promotion.deadline - user.date_joined).total_seconds()
        ),
        "offer_amount_display": money.display_usd(credits.promotion.amount_micros, places=0),
        "balance_display": money.display_usd(credits.balance_micros),
        "buy_url": buy_url,
        "verification": abuse.pending_verification(user=user),
    })


def verify_email(request, token: str):
    """The signed link emailed at sign-up (PROMOTION_REQUIRE_EMAIL_VERIFICATION)."""
    try:
        abuse.verify_email(token=token)
    except ValidationError as exc:
        return render(request, "accounts/verify_email.html",
                      {"verified": False, "message": " ".join(exc.messages)}, status=400)
    return render(request, "accounts/verify_email.html", {
        "verified": True,
        "message": "Your email address is verified. Any free credit you earned is ready to use.",
    })


@login_required
@require_POST
def resend_verification(request):
    """The alert's "Resend the link" button: back to the page it was on, with what happened."""
    outcome = abuse.resend_verification(user=request.user)
    if outcome == abuse.ResendOutcome.SENT:
        messages.success(request, abuse.VERIFY_LINK_SENT.format(email=request.user.email))
    elif outcome == abuse.ResendOutcome.TOO_SOON:
        messages.warning(request, abuse.VERIFY_RESEND_TOO_SOON)
    else:
        messages.info(request, abuse.VERIFY_ALREADY_DONE)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        back = reverse("billing:dashboard")
    return redirect(back)


@login_required
@require_POST
def create_key(request):
    form = ApiKeyForm(request.POST)
    if form.is_valid():
        key, secret = services.create_api_key(user=request.user, name=form.cleaned_data["name"])
        request.session[NEW_KEY_SECRET_KEY] = {"id": key.pk, "secret": secret}
        messages.success(request, f"API key “{key.name}” created. Copy it now: it is shown once.")
    else:
        messages.error(request, "The key name is too long (100 characters at most).")
    return redirect(reverse("billing:dashboard") + "#keys")


@login_required
@require_POST
def revoke_key(request, pk: int):
    key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    services.revoke_api_key(api_key=key, user=request.user)
    messages.success(request, f"API key “{key.name}” ({key.masked}) was revoked.")
    return redirect(reverse("billing:dashboard") + "#keys")


def _promotion_state(promotion, first_token: bool) -> str:
    """One word for the page: in_window, claimed, ended, or none (no offer for this user)."""
    if promotion.claimed:
        return "claimed"
    if promotion.eligible:
        return "in_window"
    if promotion.amount_micros == 0:
        return "none"
    return "ended"


def _window_label(seconds: int) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _buy_url() -> str:
    try:
        return reverse("billing:buy")
    except NoReverseMatch:  # the purchase pages are optional in this build
        return reverse("billing:dashboard")
