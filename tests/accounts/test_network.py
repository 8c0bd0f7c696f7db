"""The client's address (accounts.network): X-Forwarded-For only from trusted proxies;
/24 and /64 networks."""

import pytest
from django.test import RequestFactory

from accounts.network import client_ip, network_of


def _request(remote: str, xff: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if xff is not None:
        extra["HTTP_X_FORWARDED_FOR"] = xff
    return RequestFactory().post("/api/auth/register", **extra)


@pytest.mark.parametrize(("trusted", "remote", "xff", "expected"), [
    ([], "198.51.100.7", None, "198.51.100.7"),
    ([], "198.51.100.7", "1.2.3.4", "198.51.100.7"),  # untrusted peer: header ignored
    (["127.0.0.1"], "127.0.0.1", "203.0.113.9", "203.0.113.9"),
    (["127.0.0.1"], "127.0.0.1", "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # forged left part
    (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", "6.6.6.6, 203.0.113.9, 10.1.2.3",
     "203.0.113.9"),  # a chain of trusted proxies
    (["127.0.0.1"], "127.0.0.1", "garbage", "127.0.0.1"),
    (["127.0.0.1"], "127.0.0.1", None, "127.0.0.1"),
    (["::1"], "::1", "2001:db8::5", "2001:db8::5"),
])
def test_client_ip_believes_x_forwarded_for_only_from_trusted_proxies(settings, trusted, remote,
                                                                      xff, expected):
    settings.TRUSTED_PROXIES = trusted
    assert client_ip(_request(remote, xff)) == expected


def test_networks_are_slash_24_and_slash_64():
    assert network_of("203.0.113.77") == "203.0.113.0/24"
    assert network_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert network_of("::ffff:203.0.113.77") == "203.0.113.0/24"
    assert network_of(None) == ""
