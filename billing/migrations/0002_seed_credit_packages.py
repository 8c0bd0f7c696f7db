"""Seed the three packages on the buy page: $10, $25, $100 (editable in admin)."""

from django.db import migrations

PACKAGES = [("Starter", 10_000_000, 1), ("Builder", 25_000_000, 2), ("Scale", 100_000_000, 3)]


def seed(apps, schema_editor):
    CreditPackage = apps.get_model("billing", "CreditPackage")
    for name, amount_micros, position in PACKAGES:
        CreditPackage.objects.get_or_create(
            amount_micros=amount_micros, defaults={"name": name, "position": position}
        )


def unseed(apps, schema_editor):
    CreditPackage = apps.get_model("billing", "CreditPackage")
    CreditPackage.objects.filter(amount_micros__in=[p[1] for p in PACKAGES]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
