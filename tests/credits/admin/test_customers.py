"""Users in the credit console (credits.admin.customers): the user page, search, filters,
adding and editing."""

import datetime as dt

from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from accounts.services import create_api_key
from tests.books import USD


def test_user_page_shows_the_credit_summary_inlines_and_permitted_buttons(
        client, support, user, fund):
    fund(user, 7)
    create_api_key(user=user, name="ci")
    client.force_login(support)
    response = client.get(reverse("admin:accounts_user_change", args=[user.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Available now" in body and "$7.00" in body and "Purchased" in body
    assert "API keys" in body and "ci" in body
    labels = [b["label"] for b in response.context["money_buttons"]]
    assert labels == ["Grant credit", "Refund", "Revoke API keys"]


def test_user_search_by_api_key_prefix(client, support, make_user):
    target, other = make_user(), make_user()
    key, _secret = create_api_key(user=target, name="k")
    client.force_login(support)
    response = client.get(reverse("admin:accounts_user_changelist"), {"q": key.prefix})
    assert [u.pk for u in response.context["cl"].result_list] == [target.pk]
    assert other.pk != target.pk


def test_user_filters_balance_and_claimed(client, support, make_user, fund):
    rich, _poor = make_user(), make_user()
    fund(rich, 1)
    client.force_login(support)
    response = client.get(reverse("admin:accounts_user_changelist"),
                          {"balance": "yes", "promotion_claimed__exact": "0"})
    assert [u.pk for u in response.context["cl"].result_list] == [rich.pk]


def test_eligible_filter_uses_each_users_window(client, support, make_user):
    fresh, old, claimed = make_user(), make_user(), make_user()
    from accounts.models import User

    User.objects.filter(pk=old.pk).update(date_joined=timezone.now() - dt.timedelta(hours=1))
    User.objects.filter(pk=claimed.pk).update(first_token_at=timezone.now())
    client.force_login(support)
    url = reverse("admin:accounts_user_changelist")
    eligible = {u.pk for u in client.get(url, {"eligible": "yes"}).context["cl"].result_list}
    not_eligible = {u.pk for u in client.get(url, {"eligible": "no"}).context["cl"].result_list}
    assert fresh.pk in eligible and {old.pk, claimed.pk} <= not_eligible
    assert not eligible & {old.pk, claimed.pk}


def test_user_can_be_added_and_edited_without_touching_credit(client, make_staff, user, fund):
    fund(user, 4)
    client.force_login(make_staff("root@tokenbank.test", superuser=True))
    response = client.post(reverse("admin:accounts_user_add"), {
        "email": "new@example.com", "usable_password": "true",
        "password1": "a-long-pass-phrase-9", "password2": "a-long-pass-phrase-9"})
    assert response.status_code == 302
    change = reverse("admin:accounts_user_change", args=[user.pk])
    form = client.get(change).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    data.update({"email": user.email, "first_name": "Ada", "credit_balance": "999",
                 "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"})
    data.pop("groups", None)
    data.pop("user_permissions", None)
    data.update({f"{p}-TOTAL_FORMS": "0" for p in ("credit_grants", "credit_holds", "api_keys")})
    data.update({f"{p}-INITIAL_FORMS": "0" for p in ("credit_grants", "credit_holds", "api_keys")})
    response = client.post(change, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    user.refresh_from_db()
    assert user.first_name == "Ada" and user.credit_balance == 4 * USD


def test_staff_cannot_add_a_user_whose_normalized_address_is_taken(client, make_user):
    make_user("ada@gmail.com")
    client.force_login(make_user("root@tokenbank.test", is_staff=True, is_superuser=True))
    response = client.post("/admin/accounts/user/add/", {
        "email": "a.d.a+2@googlemail.com", "usable_password": "true",
        "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"})
    assert response.status_code == 200
    assert "An account with this email address already exists" in response.content.decode()
    assert User.objects.count() == 2
