"""Login brute force: the web and admin logins pause an (account, address) pair after
LOGIN_FAILURE_LIMIT wrong passwords, with a message that says so (django-axes)."""

import datetime as dt

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.urls import reverse

PASSWORD = "correct-horse-battery"
ATTACKER = "203.0.113.9"

pytestmark = pytest.mark.django_db


@pytest.fixture
def customer(make_user):
    return make_user("lin@example.com")


def _log_in(client, url: str, email: str, password: str, ip: str = ATTACKER):
    return client.post(url, {"username": email, "password": password}, REMOTE_ADDR=ip)


def _fail(client, url: str, email: str, times: int, ip: str = ATTACKER) -> list[int]:
    return [_log_in(client, url, email, f"wrong-{i}", ip).status_code for i in range(times)]


def _locked_out(response) -> bool:
    return (response.status_code == 429
            and "Too many failed log-in attempts for this account from your address"
            in response.content.decode())


def test_the_web_login_pauses_an_account_and_address_after_the_limit(client, customer):
    url = reverse("login")
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == settings.LOGIN_FAILURE_LIMIT == 5
    codes = _fail(client, url, customer.email, limit - 1)
    assert codes == [200] * (limit - 1)  # the form again, with its error
    locked = _log_in(client, url, customer.email, "wrong-last")
    assert _locked_out(locked)
    assert f"paused for {settings.LOGIN_LOCKOUT_MINUTES} minutes" in locked.content.decode()
    assert int(locked["Retry-After"]) == settings.LOGIN_LOCKOUT_MINUTES * 60

    # Even the right password is refused from that address while the pause lasts...
    assert _locked_out(_log_in(client, url, customer.email, PASSWORD))
    assert "_auth_user_id" not in client.session
    # ...and a different spelling of the same email is the same account.
    assert _locked_out(_log_in(client, url, "LIN@Example.com", PASSWORD))


def test_the_pause_is_per_address_and_ends_after_the_cool_off(client, customer):
    url = reverse("login")
    _fail(client, url, customer.email, settings.AXES_FAILURE_LIMIT)
    assert _locked_out(_log_in(client, url, customer.email, PASSWORD))

    # The customer at home is not locked out by someone else's guesses.
    home = _log_in(client, url, customer.email, PASSWORD, ip="198.51.100.20")
    assert home.status_code == 302 and client.session["_auth_user_id"] == str(customer.pk)
    client.logout()

    # Once the cool-off has passed, the right password works from that address too.
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time
                                 - dt.timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES + 1))
    assert _log_in(client, url, customer.email, PASSWORD).status_code == 302


def test_other_accounts_from_the_same_address_are_not_paused(client, customer, make_user):
    other = make_user("ada@example.com")
    url = reverse("login")
    _fail(client, url, customer.email, settings.AXES_FAILURE_LIMIT)
    assert _log_in(client, url, other.email, PASSWORD).status_code == 302


def test_the_admin_login_pauses_after_the_limit_too(client, make_staff):
    staff = make_staff("root@tokenbank.test", superuser=True)
    url = reverse("admin:login")
    codes = _fail(client, url, staff.email, settings.AXES_FAILURE_LIMIT - 1)
    assert codes == [200] * (settings.AXES_FAILURE_LIMIT - 1)
    locked = _log_in(client, url, staff.email, "wrong-last")
    assert _locked_out(locked)
    assert 'class="errornote"' in locked.content.decode()  # the admin's own look
    assert _locked_out(_log_in(client, url, staff.email, PASSWORD))
    assert client.get(reverse("admin:index")).status_code == 302  # still not logged in


def test_a_successful_login_clears_the_failures(client, customer):
    url = reverse("login")
    _fail(client, url, customer.email, settings.AXES_FAILURE_LIMIT - 1)
    assert _log_in(client, url, customer.email, PASSWORD).status_code == 302
    client.logout()
    assert _fail(client, url, customer.email, settings.AXES_FAILURE_LIMIT - 1) == [200] * (
        settings.AXES_FAILURE_LIMIT - 1)
