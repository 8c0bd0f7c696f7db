"""What billing announces; credits listens (credits imports nothing else of billing)."""

from django.dispatch import Signal

# Sent by billing.services.fulfil_purchase inside the transaction that credited a paid
# purchase, with user_id, purchase_id (str), amount_micros, payment_fingerprint (the
# payment method's fingerprint from the provider, "" when unknown) and paid_at. A receiver
# that raises rolls the crediting back (the provider retries the event).
purchase_paid = Signal()
