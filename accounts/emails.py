"""One person, one address: the normalized form of an email address.

`canonical_email` is the only place the rule lives. It is deliberately
conservative: an address is folded only where the provider documents that the
variants reach the same mailbox, so two different people never share a form.

- Everything is lowercased (local parts are case-insensitive at every provider
  we know of, and our logins already are).
- Gmail (gmail.com, googlemail.com -> gmail.com): dots in the local part are
  ignored and `+tag` is an alias.
- `+tag` is an alias (RFC 5233 sub-addressing) at: Outlook.com/Hotmail/Live/MSN,
  iCloud (icloud.com, me.com, mac.com), Fastmail, Proton (proton.me,
  protonmail.com, protonmail.ch, pm.me). Their dots are significant: kept.
- Every other domain is left as is (Yahoo's `-` addresses need setting up per
  base name, and company domains may route `+` differently).
"""

from __future__ import annotations

GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
PLUS_ALIAS_DOMAINS = frozenset({
    "outlook.com", "hotmail.com", "live.com", "msn.com",
    "icloud.com", "me.com", "mac.com",
    "fastmail.com", "fastmail.fm",
    "proton.me", "protonmail.com", "protonmail.ch", "pm.me",
})


def canonical_email(email: str) -> str:
    """The normalized form of `email` (see the module docstring). Idempotent."""
    address = (email or "").strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return address
    if domain in GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        domain = "gmail.com"
    elif domain in PLUS_ALIAS_DOMAINS:
        local = local.split("+", 1)[0]
    if not local:  # "+tag@gmail.com": nothing left to fold; keep the address whole
        return address
    return f"{local}@{domain}"


def email_domain(email: str) -> str:
    return (email or "").strip().lower().rpartition("@")[2]
