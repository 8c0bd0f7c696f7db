"""Where a request comes from: the client's address behind our trusted proxies, and its network.

The client's address is `client_ip(request)`: REMOTE_ADDR, unless that is one of
TRUSTED_PROXIES, then the right-most X-Forwarded-For hop that is not a trusted proxy.
Sign-up velocity limits and the sign-up throttle count by these.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=8)
def _trusted_networks(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def _parse_ip(value: str | None):
    try:
        address = ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _is_trusted(address) -> bool:
    return any(address in net for net in _trusted_networks(tuple(settings.TRUSTED_PROXIES)))


def client_ip(request) -> str | None:
    """The client's IP: REMOTE_ADDR, unless REMOTE_ADDR is a trusted proxy; then the
    right-most X-Forwarded-For address that is not a trusted proxy (each trusted proxy
    appends the peer it saw, so anything left of that was written by the client and
    is ignored). None when REMOTE_ADDR is missing or malformed."""
    remote = _parse_ip(request.META.get("REMOTE_ADDR"))
    if remote is None or not _is_trusted(remote):
        return str(remote) if remote is not None else None
    client = remote
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        address = _parse_ip(hop)
        if address is None:
            break  # garbage from before our proxies: trust nothing further left
        client = address
        if not _is_trusted(address):
            break
    return str(client)


def network_of(ip: str | None) -> str:
    """'203.0.113.0/24' for IPv4, '2001:db8:1:2::/64' for IPv6, '' for no address."""
    address = _parse_ip(ip)
    if address is None:
        return ""
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
