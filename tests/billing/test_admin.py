"""Support and Finance see purchases in admin; staff without a group do not."""

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("who", ["support", "finance"])
def test_support_and_finance_see_purchases_and_payment_events(client, request, who):
    client.force_login(request.getfixturevalue(who))
    for name in ("admin:billing_purchase_changelist", "admin:billing_paymentevent_changelist"):
        assert client.get(reverse(name)).status_code == 200


def test_only_finance_edits_credit_packages(client, support, finance):
    add_url = reverse("admin:billing_creditpackage_add")
    client.force_login(support)
    assert client.get(add_url).status_code == 403
    client.force_login(finance)
    assert client.get(add_url).status_code == 200


def test_staff_without_a_group_do_not_see_purchases(client, bare_staff):
    client.force_login(bare_staff)
    assert client.get(reverse("admin:billing_purchase_changelist")).status_code == 403
