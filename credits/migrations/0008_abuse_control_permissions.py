"""The staff groups and the abuse controls: Support reads sign-ups, claims, domain rules and
reviews; Finance also edits domain rules and decides reviews (clawback also needs void_grant,
which Finance has)."""

from django.db import migrations

SUPPORT = [("credits", "view_signuprecord"), ("credits", "view_promotionclaim"),
           ("credits", "view_emaildomainrule"), ("credits", "view_promotionreview")]
FINANCE = SUPPORT + [("credits", "add_emaildomainrule"), ("credits", "change_emaildomainrule"),
                     ("credits", "delete_emaildomainrule"), ("credits", "change_promotionreview")]


def add_permissions(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, wanted in (("Support", SUPPORT), ("Finance", FINANCE)):
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in wanted:
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename).first()
            if permission is not None:
                group.permissions.add(permission)


class Migration(migrations.Migration):

    dependencies = [
        ('credits', '0007_abuse_controls'),
    ]

    operations = [
        migrations.RunPython(add_permissions, migrations.RunPython.noop),
    ]
