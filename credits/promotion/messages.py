"""What users are told about the sign-up credit (one place, so pages, emails and 402s agree)."""

DISPOSABLE_REFUSED = (
    "Sign-ups with disposable email addresses are not accepted. "
    "Please use an address you will keep."
)
WITHHELD_IP = (
    "Several accounts were created from your IP address in the last hour, so this account "
    "does not get the free sign-up credit. Everything else works: you can buy credit any time."
)
WITHHELD_NETWORK = (
    "Many accounts were created from your network in the last hour, so this account does "
    "not get the free sign-up credit. Everything else works: you can buy credit any time."
)
WITHHELD_NETWORK_PROMOTIONS = (
    "Your network has received the free sign-up credit several times today, so this account "
    "does not get it. Everything else works: you can buy credit any time."
)
WITHHELD_CLAIMED = (
    "The free sign-up credit was already given to an account with this email address, "
    "so this account does not get it again."
)
OFFER_PAUSED = "The sign-up offer is paused right now, so no free credit is given at the moment."
WITHHELD_PAUSED = (
    "The sign-up offer was paused (its budget was reached) when your first token arrived, "
    "so this account did not get the free credit."
)
VERIFY_TO_SPEND = (
    "Verify your email address to use your free credit: follow the link we emailed you."
)
VERIFY_LINK_SENT = "Link sent to {email}. Follow it to unlock your credit."
VERIFY_RESEND_TOO_SOON = "Please wait a minute before asking again."
VERIFY_ALREADY_DONE = "Already verified: your email address is confirmed."

# Soft signals: not refusals, they flag a grant for a human to look at.
SOFT_SIGNALS = {
    "network_repeat": "the sign-up's network already received the sign-up credit in the last day",
    "shared_ip": "another account signed up from the same IP address in the last hour",
    "plus_tag": "the address carries a +tag",
}
