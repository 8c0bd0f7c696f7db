"""What the data migrations seed, seeded again: a transactional test flushes every table, the
seeded rows included, so a test that needs them puts them back (each seed is idempotent)."""

import importlib

from django.apps import apps


def _migration(name: str):
    return importlib.import_module(name)


def seed_demo_models() -> None:
    """The demo models and their prices."""
    _migration("inference.migrations.0002_seed_demo_models").seed(apps, None)


def seed_credit_packages() -> None:
    """The $10, $25 and $100 credit packages."""
    _migration("billing.migrations.0002_seed_credit_packages").seed(apps, None)


def seed_default_promotion() -> None:
    """The default first-token promotion, following the settings."""
    _migration("credits.migrations.0005_default_promotion_and_staff_groups").create_default_promotion(
        apps, None)


def seed_upstreams_and_embeddings() -> None:
    """The default upstream (following the settings) and the demo embedding model."""
    _migration("inference.migrations.0006_default_upstream_and_demo_embeddings").seed(apps, None)
