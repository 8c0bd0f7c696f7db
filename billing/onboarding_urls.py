from django.urls import path

from billing import onboarding

app_name = "onboarding"

# Under /accounts/ (config/urls.py), where they have always been.
urlpatterns = [
    path("signup/", onboarding.signup, name="signup"),
    path("onboarding/", onboarding.onboarding, name="onboarding"),
    # Before the token route, which would take "resend" for a token.
    path("verify-email/resend/", onboarding.resend_verification, name="resend_verification"),
    path("verify-email/<str:token>/", onboarding.verify_email, name="verify_email"),
]
