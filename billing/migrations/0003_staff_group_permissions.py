"""The Support and Finance groups (created by credits 0005) see purchases and payment
events; Finance also manages the credit packages."""

from django.db import migrations

SUPPORT = [("billing", "view_purchase"), ("billing", "view_paymentevent"),
           ("billing", "view_creditpackage")]
FINANCE = SUPPORT + [("billing", "add_creditpackage"), ("billing", "change_creditpackage")]


def add_permissions(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config("billing")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, wanted in (("Support", SUPPORT), ("Finance", FINANCE)):
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in wanted:
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename))


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_seed_credit_packages"),
        ("credits", "0006_variant_weight_zero_and_more_staff_permissions"),
    ]
    operations = [migrations.RunPython(add_permissions, migrations.RunPython.noop)]
