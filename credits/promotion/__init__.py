"""The first-token promotion end to end, one module per concern:

terms (who plays for which promotion and variant; the kill switch), status (where a user
stands, in words), signup (disposable domains, velocity limits), award (the grant, caps
and pause, soft signals), verification (the email link), review (confirm or claw back),
metrics (the console's table), messages (what users are told).
"""
