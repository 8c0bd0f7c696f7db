import datetime as dt

import pytest
from django.utils import timezone

from accounts import services as account_services
from inference.models import AiModel, UsageRecord

PASSWORD = "correct-horse-battery"


@pytest.fixture
def member(db):
    """A customer who just registered (promotion window open) with their first key."""
    user, _key, _secret = account_services.register_user(email="grace@example.com", password=PASSWORD)
    return user


@pytest.fixture
def signed_in(client, member):
    client.force_login(member)
    return client


def backdate_signup(user, seconds: int) -> None:
    """Move date_joined into the past so the promotion window has run out."""
    user.date_joined = timezone.now() - dt.timedelta(seconds=seconds)
    user.save(update_fields=["date_joined"])


def make_usage(user, *, model_id: str = "demo-small", cost_micros: int = 1200, days_ago: int = 0,
               n: int = 0, prompt_tokens: int = 12, completion_tokens: int = 30) -> UsageRecord:
    model = AiModel.objects.get(pk=model_id)
    price = model.price_at()
    started = timezone.now() - dt.timedelta(days=days_ago)
    return UsageRecord.objects.create(
        request_id=f"req-{user.pk}-{model_id}-{days_ago}-{n}", user=user, model=model,
        endpoint="chat.completions", prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        input_price_per_million_micros=price.input_price_per_million_micros,
        output_price_per_million_micros=price.output_price_per_million_micros,
        cost_micros=cost_micros, status="SUCCEEDED", latency_ms=321, started_at=started,
    )


@pytest.fixture
def seed_data(transactional_db):
    """What data migrations seed (the demo models, the default promotion): transactional
    tests that ran earlier flushed them."""
    import importlib

    from django.apps import apps

    importlib.import_module("inference.migrations.0002_seed_demo_models").seed(apps, None)
    importlib.import_module(
        "credits.migrations.0005_default_promotion_and_staff_groups"
    ).create_default_promotion(apps, None)
