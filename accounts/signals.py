"""What the accounts app announces; apps above it listen (accounts imports none of them)."""

from django.dispatch import Signal

# Sent by accounts.services.register_user inside the registration's transaction, with
# `user`, `client_ip` (accounts.network.client_ip, or None) and `referral_code` (the
# referral link's code the person signed up through, or ""). A receiver that raises
# rolls the sign-up back.
user_registered = Signal()
