from django.dispatch import Signal

# Sent once per user, inside the transaction that sets `first_token_at`.
# kwargs: user_id (int), first_token_at (datetime).
first_token_generated = Signal()
