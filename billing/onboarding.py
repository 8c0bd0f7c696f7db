"""The onboarding flow's pages: landing, sign-up, the onboarding page with its live
countdown, and the email verification link (thin doors over accounts and credits).

Paths stay under /accounts/ (URL names `onboarding:*`, billing/onboarding_urls.py);
the landing page is `landing`.
"""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.forms import SignupForm
from accounts.models import ApiKey
from accounts.network import client_ip
from accounts.throttles import registration_allowed, registration_limited_message
from billing import selectors
from billing.labels import minutes_seconds
from credits import money
from credits.promotion import messages as messages_text
from credits.promotion import referrals, verification
from credits.promotion.milestones import milestone_progress
from credits.promotion.terms import live_promotion, settings_terms, terms_for
from credits.selectors import get_user_credits

# The new key's secret waits in the session only until the onboarding page has shown it once.
ONBOARDING_SECRET_KEY = "onboarding_api_key_secret"


def _offer_context() -> dict:
    """The first-token offer a new sign-up joins now (none when no promotion is live)."""
    promotion = live_promotion()
    terms = terms_for(promotion, None) if promotion is not None else settings_terms()
    return {
        "offer_active": promotion is not None and terms.amount_micros > 0,
        "offer_amount_display": money.display_usd(terms.amount_micros, places=0),
        "window_label": minutes_seconds(terms.window_seconds),
        "expiry_days": terms.expiry_days,
    }


def landing(request):
    return render(request, "landing.html", {
        "models": selectors.model_price_list(),
        **_offer_context(),
    })


# The referral link is the sign-up page with ?ref=<code>; the code waits in the session
# until the sign-up (credits.promotion.referrals attributes it once).
REFERRAL_SESSION_KEY = "referral_code"


def signup(request):
    if request.user.is_authenticated:
        return redirect("onboarding:onboarding")
    ref = referrals.clean_code(request.GET.get("ref"))
    if ref:
        request.session[REFERRAL_SESSION_KEY] = ref
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        # The same per-address counter as /api/auth/register: one limit for both doors.
        allowed, retry_after = registration_allowed(request)
        if not allowed:
            form.add_error(None, registration_limited_message(retry_after))
            response = render(request, "registration/signup.html",
                              {"form": form, **_offer_context()}, status=429)
            response["Retry-After"] = str(retry_after)
            return response
    if request.method == "POST" and form.is_valid():
        registered = form.save(client_ip=client_ip(request),
                               referral_code=request.session.get(REFERRAL_SESSION_KEY, ""))
        if registered is not None:
            user, _key, secret = registered
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[ONBOARDING_SECRET_KEY] = secret
            return redirect("onboarding:onboarding")
    return render(request, "registration/signup.html", {"form": form, **_offer_context()})


@login_required
def onboarding(request):
    user = request.user
    secret = request.session.pop(ONBOARDING_SECRET_KEY, None)
    credits = get_user_credits(user=user)
    key = ApiKey.objects.active().filter(user=user).first()
    models = selectors.model_price_list()
    demo_model = next((m.id for m in models if m.id == "demo-small"), models[0].id if models else "")
    first_token = user.first_token_at is not None
    state = _promotion_state(credits.promotion, first_token)
    buy_url = reverse("billing:buy")
    window_seconds = (credits.promotion.deadline - user.date_joined).total_seconds()
    return render(request, "onboarding/onboarding.html", {
        "onboarding_config": {
            "state": state,
            "firstToken": first_token,
            # A small page of entries keeps the 2-second poll cheap.
            "creditsUrl": "/api/credits?page_size=5",
            "completionsUrl": "/v1/chat/completions",
            "buyUrl": buy_url,
            "docsUrl": reverse("docs") + "#errors",
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
        "window_label": minutes_seconds(window_seconds),
        # The urgency bar shrinks from the whole window to nothing.
        "window_ms": int(window_seconds * 1000),
        "offer_amount_display": money.display_usd(credits.promotion.amount_micros, places=0),
        # Headlines round down to the cent (never more than there is); the exact figure beside.
        "balance_display": money.headline_usd(credits.balance_micros),
        "balance_exact": money.display_usd(credits.balance_micros),
        # Credit left after the offer ended (bought, granted): nothing to add, calls keep working.
        "has_credit": credits.available_micros > 0,
        "buy_url": buy_url,
        "verification": verification.pending_verification(user=user),
        "milestones": milestone_progress(user=user),
    })


def verify_email(request, token: str):
    """The signed link emailed at sign-up (PROMOTION_REQUIRE_EMAIL_VERIFICATION)."""
    try:
        verification.verify_email(token=token)
    except ValidationError as exc:
        return render(request, "onboarding/verify_email.html",
                      {"verified": False, "message": " ".join(exc.messages)}, status=400)
    return render(request, "onboarding/verify_email.html", {
        "verified": True,
        "message": "Your email address is verified. Any free credit you earned is ready to use.",
    })


@login_required
@require_POST
def resend_verification(request):
    """The alert's "Resend the link" button: back to the page it was on, with what happened."""
    outcome = verification.resend_verification(user=request.user)
    if outcome == verification.ResendOutcome.SENT:
        messages.success(request, messages_text.VERIFY_LINK_SENT.format(email=request.user.email))
    elif outcome == verification.ResendOutcome.TOO_SOON:
        messages.warning(request, messages_text.VERIFY_RESEND_TOO_SOON)
    else:
        messages.info(request, messages_text.VERIFY_ALREADY_DONE)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        back = reverse("billing:dashboard")
    return redirect(back)


def _promotion_state(promotion, first_token: bool) -> str:
    """One word for the page: in_window, claimed, ended, or none (no offer for this user)."""
    if promotion.claimed:
        return "claimed"
    if promotion.eligible:
        return "in_window"
    if promotion.amount_micros == 0:
        return "none"
    return "ended"
