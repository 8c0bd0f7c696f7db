"""Sign-up side of the abuse controls: one account per normalized email, disposable
domains refused, velocity limits per IP and per network (REMOTE_ADDR, trusted proxies)."""

import pytest

from accounts.emails import canonical_email
from accounts.models import ApiKey, User
from credits.models import DomainRuleAction, EmailDomainRule, SignupRecord
from credits.promotion.messages import DISPOSABLE_REFUSED, WITHHELD_IP, WITHHELD_NETWORK

from .conftest import PASSWORD


@pytest.mark.parametrize(("email", "normalized"), [
    ("Ada.Lovelace@Gmail.com", "adalovelace@gmail.com"),
    ("ada.lovelace+trial7@gmail.com", "adalovelace@gmail.com"),
    ("a.d.a+x+y@googlemail.com", "ada@gmail.com"),
    ("ADA@GMAIL.COM", "ada@gmail.com"),
    ("first.last+news@outlook.com", "first.last@outlook.com"),
    ("first.last+a@hotmail.com", "first.last@hotmail.com"),
    ("me+shop@icloud.com", "me@icloud.com"),
    ("x.y+z@fastmail.com", "x.y@fastmail.com"),
    ("x+z@proton.me", "x@proton.me"),
    # Other providers: only the case changes.
    ("First.Last+tag@Example.com", "first.last+tag@example.com"),
    ("john-doe@yahoo.com", "john-doe@yahoo.com"),
    ("a.b+c@company.co.uk", "a.b+c@company.co.uk"),
    ("+only@gmail.com", "+only@gmail.com"),
])
def test_normalization_table(email, normalized):
    assert canonical_email(email) == normalized
    assert canonical_email(normalized) == normalized  # idempotent


@pytest.mark.django_db
def test_a_gmail_variant_of_an_existing_account_is_refused_with_a_plain_message(register):
    assert register("ada.lovelace@gmail.com").status_code == 201
    response = register("AdaLovelace+second@googlemail.com", ip="10.9.9.9")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "email"
    assert "An account with this email address already exists." in error["message"]
    assert User.objects.count() == 1 and ApiKey.objects.count() == 1
    assert User.objects.get().email_normalized == "adalovelace@gmail.com"


@pytest.mark.django_db
def test_the_web_form_refuses_a_taken_normalized_address_and_keeps_what_was_typed(client, register):
    register("ada.lovelace@gmail.com")
    response = client.post("/accounts/signup/", {"email": "a.da.love.lace@gmail.com",
                                                 "password": PASSWORD})
    assert response.status_code == 200
    assert "An account with this email address already exists." in response.content.decode()
    assert 'value="a.da.love.lace@gmail.com"' in response.content.decode()
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_a_disposable_domain_is_refused_in_the_api_envelope_and_nothing_is_created(register):
    response = register("someone@mailinator.com")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "email" and error["code"] == "invalid_request"
    assert DISPOSABLE_REFUSED in error["message"]
    assert not User.objects.exists() and not SignupRecord.objects.exists()


@pytest.mark.django_db
def test_a_disposable_domain_is_refused_on_the_sign_up_page(client):
    response = client.post("/accounts/signup/", {"email": "x@sub.mailinator.com", "password": PASSWORD})
    assert response.status_code == 200
    assert "disposable email addresses are not accepted" in response.content.decode()
    assert not User.objects.exists()


@pytest.mark.django_db
def test_staff_rules_block_a_domain_and_an_allow_beats_the_package_list(register):
    EmailDomainRule.objects.create(domain="Spam-Farm.example", action=DomainRuleAction.BLOCK)
    EmailDomainRule.objects.create(domain="mailinator.com", action=DomainRuleAction.ALLOW)
    assert register("a@spam-farm.example").status_code == 400
    assert register("b@mx.spam-farm.example").status_code == 400
    assert register("c@mailinator.com").status_code == 201
    assert register("d@example.com").status_code == 201


# --- velocity limits --------------------------------------------------------------------


def _promotion(response) -> dict:
    assert response.status_code == 201, response.content
    return response.json()["promotion"]


@pytest.mark.django_db
def test_sign_ups_over_the_per_ip_limit_still_work_but_withhold_the_promotion(settings, register):
    settings.SIGNUPS_PER_IP_PER_HOUR = 2
    first = [_promotion(register(f"u{i}@example.com", ip="198.51.100.7")) for i in range(2)]
    assert all(p["eligible"] and p["withheld_reason"] is None for p in first)
    third = _promotion(register("u3@example.com", ip="198.51.100.7"))
    assert third["eligible"] is False and third["withheld_reason"] == WITHHELD_IP
    # Another address on another network is not affected.
    assert _promotion(register("u4@example.com", ip="192.0.2.1"))["eligible"] is True
    # The account works: it has its key and can read its credits, which say why.
    user = User.objects.get(email="u3@example.com")
    assert user.promotion_eligible is False and ApiKey.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_many_addresses_in_one_slash_24_hit_the_network_limit(settings, register):
    settings.SIGNUPS_PER_NETWORK_PER_HOUR = 3
    results = [_promotion(register(f"n{i}@example.com", ip=f"203.0.113.{10 + i}")) for i in range(5)]
    assert [p["eligible"] for p in results] == [True, True, True, False, False]
    assert results[3]["withheld_reason"] == WITHHELD_NETWORK
    assert _promotion(register("other@example.com", ip="203.0.114.10"))["eligible"] is True


@pytest.mark.django_db
def test_ipv6_addresses_in_one_slash_64_share_the_network_limit(settings, register):
    settings.SIGNUPS_PER_NETWORK_PER_HOUR = 2
    results = [_promotion(register(f"v{i}@example.com", ip=f"2001:db8:0:1::{i + 1:x}"))
               for i in range(3)]
    assert [p["eligible"] for p in results] == [True, True, False]
    assert _promotion(register("v9@example.com", ip="2001:db8:0:2::1"))["eligible"] is True


@pytest.mark.django_db
def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_on_its_own(settings, register):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.SIGNUPS_PER_IP_PER_HOUR = 1
    # Many clients behind our proxy on loopback: each is its own address and network.
    results = [_promotion(register(f"p{i}@example.com", ip="127.0.0.1", xff=f"198.51.{i}.20"))
               for i in range(4)]
    assert all(p["eligible"] for p in results)
    assert set(SignupRecord.objects.values_list("ip", flat=True)) == {
        f"198.51.{i}.20" for i in range(4)}
    # The same forwarded client again is over its limit.
    again = _promotion(register("p9@example.com", ip="127.0.0.1", xff="198.51.0.20"))
    assert again["withheld_reason"] == WITHHELD_IP


@pytest.mark.django_db
def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(settings, register):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.SIGNUPS_PER_IP_PER_HOUR = 2
    results = [_promotion(register(f"s{i}@example.com", ip="192.0.2.66", xff=f"10.{i}.0.1"))
               for i in range(3)]
    assert [p["eligible"] for p in results] == [True, True, False]
    assert set(SignupRecord.objects.values_list("ip", flat=True)) == {"192.0.2.66"}


@pytest.mark.django_db
def test_the_registration_throttle_counts_the_real_client_not_a_forged_header(settings, register):
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 2
    codes = [register(f"t{i}@example.com", ip="192.0.2.77", xff=f"10.0.{i}.1").status_code
             for i in range(3)]
    assert codes == [201, 201, 429]


@pytest.mark.django_db
def test_register_user_without_an_address_is_not_counted(settings):
    from accounts.services import register_user

    settings.SIGNUPS_PER_IP_PER_HOUR = 1
    users = [register_user(email=f"shell{i}@example.com", password=PASSWORD)[0] for i in range(3)]
    assert all(u.promotion_eligible for u in users)
    assert SignupRecord.objects.filter(ip__isnull=True).count() == 3
