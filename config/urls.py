from django.contrib import admin
from django.urls import include, path, re_path
from django.views.defaults import server_error as html_server_error

from accounts.rest import DocsView, SchemaView
from accounts.urls import auth_patterns
from billing import onboarding, usage_views
from inference.errors import api_not_found, api_server_error
from inference.urls import api_urlpatterns, v1_urlpatterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", onboarding.landing, name="landing"),
    path("accounts/", include(auth_patterns)),
    path("accounts/", include("accounts.urls")),
    path("accounts/", include("billing.onboarding_urls")),
    path("billing/", include("billing.urls")),
    path("docs/", usage_views.api_docs, name="docs"),  # the hand-written API guide
    # The JSON API (inference issue): OpenAI-compatible under /v1, the rest under /api.
    path("v1/", include(v1_urlpatterns)),
    path("api/", include("accounts.api")),
    path("api/", include("credits.api")),
    path("api/", include(api_urlpatterns)),
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    # Split: the init script is served from its own URL, so the page needs no inline script (CSP).
    path("api/docs/", DocsView.as_view(
        url_name="api-schema", template_name="api/swagger_ui.html"), name="api-docs"),
]

# Keep last: unknown URLs under /v1 and /api answer in the API's JSON error envelope.
urlpatterns += [re_path(r"^(?:v1|api)(?:/|$)", api_not_found)]
handler500 = "config.urls.server_error"


def server_error(request, *args, **kwargs):
    """JSON for the API's paths, Django's page elsewhere."""
    if request.path.startswith(("/v1/", "/api/")):
        return api_server_error(request)
    return html_server_error(request)
