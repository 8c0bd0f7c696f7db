from django.db import migrations, models


def mark_accounts(apps, schema_editor):
    """Accounts that already hold an "extended while active" grant keep extending it."""
    CreditAccount = apps.get_model("credits", "CreditAccount")
    CreditGrant = apps.get_model("credits", "CreditGrant")
    users = CreditGrant.objects.filter(extend_days__isnull=False).values("user_id")
    CreditAccount.objects.filter(user_id__in=users).update(has_extending_grants=True)


class Migration(migrations.Migration):

    dependencies = [
        ("credits", "0018_promotions_tiers_referrals"),
    ]

    operations = [
        migrations.AddField(
            model_name="creditaccount",
            name="has_extending_grants",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(mark_accounts, migrations.RunPython.noop),
    ]
