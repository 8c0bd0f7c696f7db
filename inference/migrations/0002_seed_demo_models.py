"""Seed the built-in demo models with realistic prices (micro-dollars per million tokens)."""

import datetime as dt

from django.db import migrations

SEED_PRICES_FROM = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

DEMO_MODELS = [
    # id, display name, max output, context, input price, output price (micros per 1M tokens)
    ("demo-small", "Demo small", 4096, 16384, 150_000, 600_000),
    ("demo-medium", "Demo medium", 8192, 32768, 500_000, 1_500_000),
    ("demo-large", "Demo large", 16384, 131072, 2_500_000, 10_000_000),
]


def seed(apps, schema_editor):
    AiModel = apps.get_model("inference", "AiModel")
    ModelPrice = apps.get_model("inference", "ModelPrice")
    for model_id, name, max_out, context, price_in, price_out in DEMO_MODELS:
        model, _ = AiModel.objects.get_or_create(
            id=model_id,
            defaults={
                "display_name": name, "backend": "demo", "max_output_tokens": max_out,
                "context_length": context, "active": True, "created_at": SEED_PRICES_FROM,
            },
        )
        ModelPrice.objects.get_or_create(
            model=model, effective_from=SEED_PRICES_FROM,
            defaults={
                "input_price_per_million_micros": price_in,
                "output_price_per_million_micros": price_out,
                "note": "Launch price",
            },
        )


def unseed(apps, schema_editor):
    AiModel = apps.get_model("inference", "AiModel")
    UsageRecord = apps.get_model("inference", "UsageRecord")
    ids = [row[0] for row in DEMO_MODELS]
    used = set(UsageRecord.objects.filter(model_id__in=ids).values_list("model_id", flat=True))
    AiModel.objects.filter(id__in=set(ids) - used).delete()


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
