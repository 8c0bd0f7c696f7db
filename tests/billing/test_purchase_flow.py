"""Buying credit through the pages, with the embedded test provider (no network)."""

import re
import uuid

import pytest
from django.urls import reverse

from billing import services
from billing.models import CreditPackage, EventOutcome, PaymentEvent, Purchase, PurchaseStatus
from billing.providers import StripeProvider, TestProvider, get_provider
from billing.purchases import list_purchases
from credits.models import CreditGrant, GrantKind
from tests.books import USD, assert_books_balance

pytestmark = pytest.mark.usefixtures("test_provider", "packages")


@pytest.fixture
def buyer(client, user):
    client.force_login(user)
    return user


def package(usd: int) -> CreditPackage:
    return CreditPackage.objects.get(amount_micros=usd * USD)


def buy(client, **data):
    return client.post(reverse("billing:buy"), data)


def test_buy_page_offers_the_packages_and_says_test_mode(client, buyer):
    response = client.get(reverse("billing:buy"))

    assert response.status_code == 200
    page = response.content.decode()
    for label in ("Buy $10.00", "Buy $25.00", "Buy $100.00", "TEST MODE"):
        assert label in page


def test_each_package_says_how_many_tokens_it_buys_at_the_current_price(client, buyer):
    from inference.models import AiModel

    assert AiModel.objects.get(pk="demo-small").price_at().output_price_per_million_micros == 600_000
    page = client.get(reverse("billing:buy")).content.decode()

    estimates = re.findall(r"data-package-estimate><code>([^<]+)</code> <span>≈ ([^<]+)</span>", page)
    # $10 / $0.60 per 1M = 16.67M, shown rounded down; $25 -> 41.67M; $100 -> 166.7M.
    assert estimates == [("demo-small", "16.6M"), ("demo-small", "41.6M"), ("demo-small", "166M")]
    assert page.count("<code>demo-large</code>") == 3
    assert 'aria-label="Custom amount"' in page


def test_buying_a_package_with_the_test_provider_credits_it_once(client, buyer):
    response = buy(client, package=package(10).pk)

    purchase = Purchase.objects.get(user=buyer)
    assert purchase.provider == "test"
    assert response.status_code == 302
    assert response.url == reverse("billing:checkout_test", args=[purchase.pk])
    checkout_page = client.get(response.url).content.decode()
    assert "TEST MODE" in checkout_page
    assert buyer.credit_balance == 0  # nothing until the payment is confirmed

    confirmed = client.post(response.url, {"action": "confirm"})
    client.post(response.url, {"action": "confirm"})  # a double click

    assert confirmed.url == reverse("billing:purchase", args=[purchase.pk])
    buyer.refresh_from_db()
    assert buyer.credit_balance == 10 * USD
    grant = CreditGrant.objects.get(user=buyer)
    assert (grant.kind, grant.expires_at) == (GrantKind.PURCHASED, None)
    assert grant.idempotency_key == f"test:{purchase.provider_session_id}"
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.FULFILLED
    # The test page drives the same event path a webhook does, and is recorded too.
    recorded = PaymentEvent.objects.get(provider="test")
    assert (recorded.event_type, recorded.outcome) == (
        "checkout.session.completed", EventOutcome.PROCESSED
    )
    success = client.get(confirmed.url).content.decode()
    assert "Payment received" in success
    assert "$10.00" in success
    dashboard = client.get(reverse("billing:dashboard")).content.decode()
    assert f'data-purchase="{purchase.pk}"' in dashboard
    assert purchase.receipt_reference in dashboard
    assert_books_balance(buyer.pk)


def test_declining_on_the_test_page_fails_the_purchase_and_credits_nothing(client, buyer):
    checkout = buy(client, package=package(25).pk).url

    client.post(checkout, {"action": "decline"})

    purchase = Purchase.objects.get(user=buyer)
    assert purchase.status == PurchaseStatus.FAILED
    assert CreditGrant.objects.count() == 0
    assert "Payment not completed" in client.get(
        reverse("billing:purchase", args=[purchase.pk])
    ).content.decode()
    # Too late to confirm it now.
    client.post(checkout, {"action": "confirm"})
    assert CreditGrant.objects.count() == 0


def test_custom_amount_within_limits_is_accepted(client, buyer):
    response = buy(client, amount="12.50")

    assert response.status_code == 302
    assert Purchase.objects.get(user=buyer).amount_micros == 12_500_000


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("4.99", "Enter an amount between $5.00 and $1,000.00."),
        ("1000.01", "Enter an amount between $5.00 and $1,000.00."),
        ("-10", "Enter an amount between"),
        ("12.345", "Ensure that there are no more than 2 decimal places."),
        ("", "Choose a package or enter an amount."),
        ("ten", "Enter a number."),
    ],
)
def test_custom_amount_outside_the_limits_is_refused(client, buyer, amount, message):
    response = buy(client, amount=amount)

    assert response.status_code == 400
    assert message in response.content.decode()
    assert Purchase.objects.count() == 0


def test_limits_come_from_settings(client, buyer, settings):
    settings.PURCHASE_MIN_USD = "20"

    assert buy(client, amount="15").status_code == 400
    assert buy(client, amount="20").status_code == 302


def test_an_inactive_package_cannot_be_bought(client, buyer):
    starter = package(10)
    starter.is_active = False
    starter.save()

    assert buy(client, package=starter.pk).status_code == 400
    assert Purchase.objects.count() == 0


def test_someone_elses_purchase_is_not_found(client, buyer, make_user):
    other = make_user("other@example.com")
    purchase, _ = services.start_checkout(user=other, site_url="http://testserver/", package=package(10))

    for name in ("billing:checkout_test", "billing:purchase", "billing:purchase_status"):
        assert client.get(reverse(name, args=[purchase.pk])).status_code == 404
    assert client.post(
        reverse("billing:checkout_test", args=[purchase.pk]), {"action": "confirm"}
    ).status_code == 404
    assert CreditGrant.objects.count() == 0


def test_test_payments_are_refused_once_stripe_is_configured(client, buyer, settings):
    purchase, _ = services.start_checkout(user=buyer, site_url="http://testserver/", package=package(10))
    settings.STRIPE_SECRET_KEY = "sk_test_configured"

    url = reverse("billing:checkout_test", args=[purchase.pk])
    assert client.post(url, {"action": "confirm"}).status_code == 404
    with pytest.raises(services.PurchaseRefused):
        services.answer_test_checkout(purchase=purchase, user=buyer, paid=True)
    assert CreditGrant.objects.count() == 0


def test_without_stripe_keys_or_test_mode_purchases_are_refused(client, buyer, settings):
    settings.PAYMENTS_TEST_MODE = False

    response = buy(client, package=package(10).pk)

    assert response.status_code == 400
    assert "Buying credit is not available right now." in response.content.decode()
    assert "TEST MODE" not in response.content.decode()
    assert Purchase.objects.count() == 0


def test_status_endpoint_reports_pending_then_paid_with_the_balance(client, buyer):
    checkout = buy(client, package=package(10).pk).url
    purchase = Purchase.objects.get(user=buyer)
    status_url = reverse("billing:purchase_status", args=[purchase.pk])

    assert client.get(status_url).json()["status"] == "PENDING"
    assert "Waiting for your payment" in client.get(
        reverse("billing:purchase", args=[purchase.pk])
    ).content.decode()
    client.post(checkout, {"action": "confirm"})

    assert client.get(status_url).json() == {
        "id": str(purchase.pk), "status": "FULFILLED", "amount": "10.000000", "balance": "10.000000",
    }


def test_pages_need_a_login(client):
    response = client.get(reverse("billing:buy"))
    assert response.status_code == 302
    assert reverse("login") in response.url


def test_purchases_are_listed_newest_first_for_their_owner_only(buyer, make_user):
    first, _ = services.start_checkout(user=buyer, site_url="http://t/", package=package(10))
    second, _ = services.start_checkout(user=buyer, site_url="http://t/", amount_micros=7 * USD)
    services.start_checkout(user=make_user(), site_url="http://t/", package=package(25))

    assert [p.pk for p in list_purchases(user=buyer)] == [second.pk, first.pk]


def test_provider_is_test_without_keys_and_stripe_with_them(settings):
    assert isinstance(get_provider(), TestProvider)
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    assert isinstance(get_provider(), StripeProvider)


def test_stripe_checkout_asks_for_the_amount_in_cents_tied_to_the_purchase_and_user(buyer):
    purchase = Purchase.objects.create(
        user=buyer, user_email=buyer.email, provider="stripe", amount_micros=25 * USD,
        idempotency_key=f"purchase:{uuid.uuid4().hex}",
    )
    provider = StripeProvider(secret_key="sk_test_x", webhook_secret="whsec_x")

    params = provider.checkout_params(
        purchase=purchase, success_url="https://tb.example/ok", cancel_url="https://tb.example/no"
    )

    assert params["mode"] == "payment"
    (line,) = params["line_items"]
    assert line["quantity"] == 1
    assert line["price_data"]["unit_amount"] == 2500
    assert line["price_data"]["currency"] == "usd"
    assert params["client_reference_id"] == str(purchase.pk)
    assert params["metadata"] == {"purchase_id": str(purchase.pk), "user_id": str(buyer.pk)}
    assert params["payment_intent_data"]["metadata"] == params["metadata"]
    assert params["customer_email"] == buyer.email
    assert (params["success_url"], params["cancel_url"]) == (
        "https://tb.example/ok", "https://tb.example/no"
    )


def test_admin_shows_purchases_read_only_with_the_refund_shortfall(client, make_user, buyer):
    staff = make_user("staff@example.com", is_staff=True, is_superuser=True)
    purchase, _ = services.start_checkout(user=buyer, site_url="http://t/", package=package(10))
    services.answer_test_checkout(purchase=purchase, user=buyer, paid=True)
    from credits import services as credit_services

    credit_services.use_credits(user=buyer, amount_micros=6 * USD)
    services.apply_refund(purchase=purchase, refunded_total_micros=10 * USD, reference="re_1")
    client.force_login(staff)

    listing = client.get(reverse("admin:billing_purchase_changelist")).content.decode()

    assert "Refund not taken back" in listing
    assert "$6.00" in listing
    assert client.get(reverse("admin:billing_purchase_add")).status_code == 403
    detail = client.get(reverse("admin:billing_purchase_change", args=[purchase.pk]))
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    assert client.get(reverse("admin:billing_paymentevent_changelist")).status_code == 200
    assert client.get(reverse("admin:billing_creditpackage_add")).status_code == 200


def test_staff_refund_of_a_test_purchase_takes_the_credit_back_through_the_event_path(
    client, make_user, buyer
):
    staff = make_user("staff@example.com", is_staff=True, is_superuser=True)
    purchase, _ = services.start_checkout(user=buyer, site_url="http://t/", package=package(25))
    services.answer_test_checkout(purchase=purchase, user=buyer, paid=True)
    unpaid, _ = services.start_checkout(user=buyer, site_url="http://t/", package=package(10))
    client.force_login(staff)

    response = client.post(
        reverse("admin:billing_purchase_changelist"),
        {"action": "refund_test_purchases", "_selected_action": [purchase.pk, unpaid.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert "Refunded $25.00." in page
    assert "Only paid test-mode purchases can be refunded here." in page
    buyer.refresh_from_db()
    assert buyer.credit_balance == 0
    purchase.refresh_from_db()
    assert purchase.refunded_micros == 25 * USD
    assert PaymentEvent.objects.filter(event_type="charge.refunded").count() == 1
    assert_books_balance(buyer.pk)
