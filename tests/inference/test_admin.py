"""Model prices in admin: a change is a new row (effective from); history is never edited."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from inference.models import AiModel, ModelPrice

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(db):
    model = AiModel.objects.create(id="test-model", display_name="Test")
    ModelPrice.objects.create(model=model, input_price_per_million_micros=100_000,
                              output_price_per_million_micros=400_000,
                              effective_from=timezone.now() - dt.timedelta(days=1))
    return model


def inline_data(model, **new_row):
    prices = list(model.prices.all())
    data = {
        "display_name": model.display_name, "backend": model.backend,
        "upstream_model": "", "max_output_tokens": model.max_output_tokens,
        "context_length": model.context_length, "active": "on",
        "prices-TOTAL_FORMS": str(len(prices) + (1 if new_row else 0)),
        "prices-INITIAL_FORMS": str(len(prices)),
        "prices-MIN_NUM_FORMS": "0", "prices-MAX_NUM_FORMS": "1000",
    }
    for i, price in enumerate(prices):
        data[f"prices-{i}-id"] = str(price.pk)
        data[f"prices-{i}-model"] = model.pk
    if new_row:
        i = len(prices)
        data[f"prices-{i}-model"] = model.pk
        data.update({f"prices-{i}-{k}": v for k, v in new_row.items()})
    return data


def test_finance_schedules_a_price_change_and_calls_use_the_price_in_effect(
        client, finance, model):
    client.force_login(finance)
    url = reverse("admin:inference_aimodel_change", args=[model.pk])
    assert client.get(url).status_code == 200
    starts = (timezone.now() + dt.timedelta(hours=1)).replace(microsecond=0)
    response = client.post(url, inline_data(
        model, input_usd="0.25", output_usd="1.5",
        effective_from_0=starts.strftime("%Y-%m-%d"), effective_from_1=starts.strftime("%H:%M:%S"),
        note="Q3 price"))
    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    assert model.prices.count() == 2
    assert model.price_at().input_price_per_million_micros == 100_000  # a call starting now
    later = model.price_at(starts + dt.timedelta(seconds=1))
    assert (later.input_price_per_million_micros, later.output_price_per_million_micros) == (
        250_000, 1_500_000)


def test_a_backdated_price_is_refused(client, finance, model):
    client.force_login(finance)
    url = reverse("admin:inference_modelprice_add")
    past = timezone.now() - dt.timedelta(days=2)
    response = client.post(url, {
        "model": model.pk, "input_usd": "1", "output_usd": "1",
        "effective_from_0": past.strftime("%Y-%m-%d"), "effective_from_1": "00:00:00"})
    assert response.status_code == 200
    assert "cannot start in the past" in response.content.decode()
    assert model.prices.count() == 1


def test_existing_prices_cannot_be_edited_or_deleted(client, make_staff, model):
    client.force_login(make_staff("root@tokenbank.test", superuser=True))
    price = model.prices.get()
    change = reverse("admin:inference_modelprice_change", args=[price.pk])
    assert client.get(change).status_code == 200
    assert client.post(change, {"note": "edited"}).status_code == 403
    assert client.post(reverse("admin:inference_modelprice_delete", args=[price.pk]),
                       {"post": "yes"}).status_code == 403
    price.refresh_from_db()
    assert price.note == ""


def test_support_sees_prices_but_cannot_add_them(client, support, model):
    client.force_login(support)
    assert client.get(reverse("admin:inference_modelprice_changelist")).status_code == 200
    assert client.get(reverse("admin:inference_modelprice_add")).status_code == 403


def test_usage_records_are_read_only(client, make_staff):
    client.force_login(make_staff("root@tokenbank.test", superuser=True))
    assert client.get(reverse("admin:inference_usagerecord_changelist")).status_code == 200
    assert client.get(reverse("admin:inference_usagerecord_add")).status_code == 403


SECRET = "sk-live-upstream-SECRET-123"


@pytest.fixture
def superuser(make_staff):
    return make_staff("root@example.com", superuser=True)


def test_an_upstreams_api_key_is_write_only_and_never_shown(client, superuser, caplog):
    from inference.models import Upstream

    client.force_login(superuser)
    add = reverse("admin:inference_upstream_add")
    response = client.post(add, {"name": "vllm-a", "base_url": "https://vllm.internal/v1",
                                 "api_key": SECRET, "connect_timeout_seconds": "2",
                                 "read_timeout_seconds": "30", "active": "on"})
    assert response.status_code == 302
    upstream = Upstream.objects.get(name="vllm-a")
    assert upstream.api_key == SECRET
    assert SECRET not in repr(upstream) and SECRET not in str(upstream)
    change = reverse("admin:inference_upstream_change", args=[upstream.pk])
    for url in (change, reverse("admin:inference_upstream_changelist")):
        assert SECRET not in client.get(url).content.decode()
    # Saved again without typing it: the key stays; a new one replaces it; clearing removes it.
    form = {"name": "vllm-a", "base_url": "https://vllm.internal/v1", "api_key": "",
            "connect_timeout_seconds": "2", "read_timeout_seconds": "30", "active": "on"}
    assert client.post(change, form).status_code == 302
    upstream.refresh_from_db()
    assert upstream.api_key == SECRET
    assert client.post(change, {**form, "api_key": "sk-new"}).status_code == 302
    upstream.refresh_from_db()
    assert upstream.api_key == "sk-new"
    assert client.post(change, {**form, "clear_api_key": "on"}).status_code == 302
    upstream.refresh_from_db()
    assert upstream.api_key == ""
    assert SECRET not in caplog.text
    from django.contrib.admin.models import LogEntry
    assert not any(SECRET in (e.change_message or "") for e in LogEntry.objects.all())


def test_an_upstream_without_a_base_url_must_follow_the_settings(client, superuser):
    client.force_login(superuser)
    response = client.post(reverse("admin:inference_upstream_add"), {
        "name": "nowhere", "base_url": "", "connect_timeout_seconds": "2",
        "read_timeout_seconds": "30"})
    assert response.status_code == 200
    assert "A base URL is needed" in response.content.decode()


def test_class_prices_are_set_in_admin_and_empty_ones_default(client, finance, model):
    client.force_login(finance)
    starts = (timezone.now() + dt.timedelta(minutes=1)).replace(microsecond=0)
    response = client.post(reverse("admin:inference_modelprice_add"), {
        "model": model.pk, "input_usd": "1", "output_usd": "4", "cached_input_usd": "0.25",
        "cache_write_usd": "", "reasoning_usd": "",
        "effective_from_0": starts.strftime("%Y-%m-%d"),
        "effective_from_1": starts.strftime("%H:%M:%S")})
    assert response.status_code == 302
    price = model.prices.get(effective_from=starts)
    assert (price.cached_input_price_per_million_micros, price.cache_write_price_per_million_micros,
            price.reasoning_price_per_million_micros) == (250_000, None, None)
    prices = price.token_prices()
    assert (prices.cached_input, prices.cache_write, prices.reasoning) == (
        250_000, 1_000_000, 4_000_000)


def test_usage_records_show_token_classes_estimates_and_attempts(client, superuser, model, user):
    from inference.models import UsageRecord

    UsageRecord.objects.create(
        request_id="chatcmpl-x", user=user, model=model, endpoint="chat.completions",
        prompt_tokens=1000, cached_tokens=600, completion_tokens=300, reasoning_tokens=200,
        input_price_per_million_micros=1, output_price_per_million_micros=1, cost_micros=5100,
        status="SUCCEEDED", estimated=True, upstream="secondary",
        attempts=[{"upstream": "primary", "outcome": "unavailable", "status": 503},
                  {"upstream": "secondary", "outcome": "served"}],
        started_at=timezone.now())
    client.force_login(superuser)
    html = client.get(reverse("admin:inference_usagerecord_changelist")).content.decode()
    for text in ("cached tokens", "reasoning tokens", "estimated", "secondary", ">600<", ">200<"):
        assert text in html.lower(), text
