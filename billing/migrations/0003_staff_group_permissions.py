"""The Support and Finance groups (created by credits 0005) see purchases and payment
events; Finance also manages the credit packages."""

from django.db import migrations

from credits.migrations._staff_groups import grant_group_permissions

SUPPORT = [("billing", "view_purchase"), ("billing", "view_paymentevent"),
           ("billing", "view_creditpackage")]
FINANCE = SUPPORT + [("billing", "add_creditpackage"), ("billing", "change_creditpackage")]


def add_permissions(apps, schema_editor):
    grant_group_permissions(apps, {"Support": SUPPORT, "Finance": FINANCE})


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_seed_credit_packages"),
        ("credits", "0006_variant_weight_zero_and_more_staff_permissions"),
    ]
    operations = [migrations.RunPython(add_permissions, migrations.RunPython.noop)]
