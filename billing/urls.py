from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("history.csv", views.history_csv, name="history_csv"),
]
