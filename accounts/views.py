"""Web doors of the accounts app: creating and revoking API keys (thin doors)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts import services
from accounts.forms import ApiKeyForm
from accounts.models import ApiKey

# A new key's secret waits in the session until the dashboard has shown it once.
NEW_KEY_SECRET_KEY = "new_api_key_secret"


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
