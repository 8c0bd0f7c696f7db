from django.dispatch import Signal

# Sent by credits.sweeps after the stale-hold sweep, outside any transaction, so the app
# that made the holds can record the calls they belonged to (inference writes their usage
# records). kwargs: settled (tuple of credits.services.SweptHold), now (datetime).
holds_swept = Signal()
