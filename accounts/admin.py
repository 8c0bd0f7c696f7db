"""The accounts side of the user admin: creating and editing a user by email.

The credit console registers the User and ApiKey admins (credits/admin/customers.py),
built on these forms; accounts imports no app above it."""

from __future__ import annotations

from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError

from accounts.emails import canonical_email
from accounts.models import User


class EmailUserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)

    def clean_email(self):
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email_normalized=canonical_email(email)).exists():
            raise ValidationError("An account with this email address already exists "
                                  "(the same address once dots / +tags are folded).")
        return email


class EmailUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"
