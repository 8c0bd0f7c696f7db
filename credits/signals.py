from django.dispatch import Signal

# Sent by credits.sweeps after the stale-hold sweep, outside any transaction, so the app
# that made the holds can record the calls they belonged to (inference writes their usage
# records). kwargs: settled (tuple of credits.services.SweptHold), now (datetime).
holds_swept = Signal()

# Sent by the ledger (credits.services) inside the transaction of every paid call's charge
# (a capture of more than nothing, a USAGE debit), so rules above the ledger can react
# after the commit (milestones count spend and tokens from the ledger). kwargs: user_id,
# amount_micros, tokens (the call's delivered tokens, 0 when unknown), at (datetime).
paid_call_settled = Signal()
