from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from accounts.urls import auth_patterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", account_views.landing, name="landing"),
    path("accounts/", include(auth_patterns)),
    path("accounts/", include("accounts.urls")),
    path("billing/", include("billing.urls")),
]
