"""The staff groups and the abuse controls: Support reads sign-ups, claims, domain rules and
reviews; Finance also edits domain rules and decides reviews (clawback also needs void_grant,
which Finance has)."""

from django.db import migrations

from credits.migrations._staff_groups import grant_group_permissions

SUPPORT = [("credits", "view_signuprecord"), ("credits", "view_promotionclaim"),
           ("credits", "view_emaildomainrule"), ("credits", "view_promotionreview")]
FINANCE = SUPPORT + [("credits", "add_emaildomainrule"), ("credits", "change_emaildomainrule"),
                     ("credits", "delete_emaildomainrule"), ("credits", "change_promotionreview")]


def add_permissions(apps, schema_editor):
    grant_group_permissions(apps, {"Support": SUPPORT, "Finance": FINANCE})


class Migration(migrations.Migration):

    dependencies = [
        ('credits', '0007_abuse_controls'),
    ]

    operations = [
        migrations.RunPython(add_permissions, migrations.RunPython.noop),
    ]
