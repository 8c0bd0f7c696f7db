"""A full save of a stale user (password reset, the admin's user and password forms) while
the user's calls are billed leaves the books whole, and the next call still works.

The cached totals live on the credit account, which only the ledger writes; before, they
were columns of the user row that any full save wrote back as it had read them.
"""

import threading

import httpx
import pytest
from django.contrib.auth.forms import AdminPasswordChangeForm, SetPasswordForm

from accounts.admin import EmailUserChangeForm
from accounts.models import User
from accounts.services import create_api_key
from credits.services import verify_balances
from tests.books import USD

pytestmark = [pytest.mark.postgres]


def call(base_url: str, secret: str, i: int = 0) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        return client.post(
            "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
            json={"model": "demo-small", "max_tokens": 8,
                  "messages": [{"role": "user", "content": f"question {i}"}]})


@pytest.fixture
def customer(make_user, fund, demo_models):
    user = make_user(email="stale@example.com", promotion_eligible=False)  # only its $5
    fund(user, 5)
    _key, secret = create_api_key(user=user, name="test")
    return user, secret


def bill_calls(base_url: str, secret: str, count: int) -> None:
    responses = [call(base_url, secret, i) for i in range(count)]
    assert [r.status_code for r in responses] == [200] * count


def change_form_data(user: User) -> dict:
    return {"email": user.email, "first_name": "Ada", "last_name": "", "is_active": "on",
            "date_joined": user.date_joined.strftime("%Y-%m-%d %H:%M:%S"),
            "password": user.password}


SAVES = {
    "password reset": lambda stale: SetPasswordForm(
        stale, {"new_password1": "another-passphrase-77", "new_password2": "another-passphrase-77"}),
    "admin password change": lambda stale: AdminPasswordChangeForm(
        stale, {"password1": "another-passphrase-78", "password2": "another-passphrase-78",
                "usable_password": "true"}),
    "admin user change": lambda stale: EmailUserChangeForm(change_form_data(stale), instance=stale),
}


@pytest.mark.parametrize("save", SAVES, ids=list(SAVES))
def test_a_stale_save_of_the_user_after_billed_calls_leaves_the_books_whole(
        save, customer, live_server):
    user, secret = customer
    stale = User.objects.get(pk=user.pk)  # the form's user, loaded before the calls
    bill_calls(live_server.url, secret, 3)
    charged_before_save = 5 * USD - User.objects.get(pk=user.pk).credit_balance
    assert charged_before_save > 0

    form = SAVES[save](stale)
    assert form.is_valid(), form.errors
    form.save()

    assert verify_balances() == []
    assert User.objects.get(pk=user.pk).credit_balance == 5 * USD - charged_before_save
    assert call(live_server.url, secret).status_code == 200  # the account still calls
    assert verify_balances() == []


def test_password_resets_while_calls_stream_in_leave_the_books_whole(customer, live_server):
    user, secret = customer
    stop = threading.Event()
    statuses: list[int] = []

    def keep_calling() -> None:
        i = 0
        while not stop.is_set():
            statuses.append(call(live_server.url, secret, i).status_code)
            i += 1

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        for n in range(15):
            stale = User.objects.get(pk=user.pk)
            form = SetPasswordForm(stale, {"new_password1": f"passphrase-number-{n}",
                                           "new_password2": f"passphrase-number-{n}"})
            assert form.is_valid()
            form.save()
    finally:
        stop.set()
        caller.join()

    assert statuses and set(statuses) == {200}
    assert verify_balances() == []
    assert call(live_server.url, secret).status_code == 200
