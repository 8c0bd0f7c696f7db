"""The default upstream (it follows UPSTREAM_BASE_URL / UPSTREAM_API_KEY /
UPSTREAM_TIMEOUT_SECONDS, so the environment keeps working) with a deployment for every
model that used the settings' `openai_compatible` backend; and the demo embedding model."""

import datetime as dt

from django.db import migrations

SEED_FROM = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DEFAULT_UPSTREAM = "default"
SETTINGS_BACKEND = "openai_compatible"
# id, display name, context, input price (micros per 1M tokens)
DEMO_EMBEDDING = ("demo-embed", "Demo embeddings", 8192, 20_000)


def seed_default_upstream(apps, schema_editor):
    Upstream = apps.get_model("inference", "Upstream")
    Deployment = apps.get_model("inference", "Deployment")
    AiModel = apps.get_model("inference", "AiModel")
    upstream, _ = Upstream.objects.get_or_create(
        name=DEFAULT_UPSTREAM, defaults={"from_settings": True, "created_at": SEED_FROM})
    for model in AiModel.objects.filter(backend=SETTINGS_BACKEND):
        Deployment.objects.get_or_create(
            model=model, upstream=upstream, upstream_model=model.upstream_model,
            defaults={"position": 0, "weight": 1})


def seed_demo_embedding(apps, schema_editor):
    AiModel = apps.get_model("inference", "AiModel")
    ModelPrice = apps.get_model("inference", "ModelPrice")
    model_id, name, context, price_in = DEMO_EMBEDDING
    model, _ = AiModel.objects.get_or_create(
        id=model_id, defaults={"display_name": name, "kind": "embedding", "backend": "demo",
                               "max_output_tokens": 1, "context_length": context,
                               "active": True, "created_at": SEED_FROM})
    ModelPrice.objects.get_or_create(
        model=model, effective_from=SEED_FROM,
        defaults={"input_price_per_million_micros": price_in,
                  "output_price_per_million_micros": 0, "note": "Launch price"})


def seed(apps, schema_editor):
    seed_default_upstream(apps, schema_editor)
    seed_demo_embedding(apps, schema_editor)


def unseed(apps, schema_editor):
    apps.get_model("inference", "Deployment").objects.filter(
        upstream__name=DEFAULT_UPSTREAM).delete()
    apps.get_model("inference", "Upstream").objects.filter(name=DEFAULT_UPSTREAM).delete()
    AiModel = apps.get_model("inference", "AiModel")
    if not apps.get_model("inference", "UsageRecord").objects.filter(
            model_id=DEMO_EMBEDDING[0]).exists():
        AiModel.objects.filter(id=DEMO_EMBEDDING[0]).delete()


class Migration(migrations.Migration):
    dependencies = [("inference", "0005_upstreams_deployments_token_classes")]

    operations = [migrations.RunPython(seed, unseed)]
