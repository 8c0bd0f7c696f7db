from django.urls import path

from billing import purchase_views, usage_views, views, webhooks

app_name = "billing"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("history.csv", views.history_csv, name="history_csv"),
    path("usage/", usage_views.usage, name="usage"),
    path("usage.csv", usage_views.usage_csv, name="usage_csv"),
    # Buying credit (billing/purchase_views.py, billing/webhooks.py)
    path("buy/", purchase_views.buy, name="buy"),
    path("checkout/test/<uuid:purchase_id>/", purchase_views.checkout_test, name="checkout_test"),
    path("purchases/<uuid:purchase_id>/", purchase_views.purchase_detail, name="purchase"),
    path(
        "purchases/<uuid:purchase_id>/status/",
        purchase_views.purchase_status,
        name="purchase_status",
    ),
    path("webhooks/stripe/", webhooks.stripe_webhook, name="stripe_webhook"),
]
