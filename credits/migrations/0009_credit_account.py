"""The cached credit totals move from the user row to a credit account that only the
ledger writes (a full save of a stale user could overwrite them). Every user gets an
account carrying their current totals; accounts.0005 then drops the user's columns."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def copy_totals(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    CreditAccount = apps.get_model("credits", "CreditAccount")
    CreditAccount.objects.bulk_create(
        [CreditAccount(user_id=pk, balance_micros=balance, held_micros=held)
         for pk, balance, held in User.objects.values_list("pk", "credit_balance", "credit_held")],
        batch_size=1000,
    )


def copy_totals_back(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    CreditAccount = apps.get_model("credits", "CreditAccount")
    for account in CreditAccount.objects.all():
        User.objects.filter(pk=account.user_id).update(credit_balance=account.balance_micros,
                                                       credit_held=account.held_micros)


class Migration(migrations.Migration):

    dependencies = [
        ('credits', '0008_abuse_control_permissions'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('accounts', '0004_verification_email_sent_at'),
    ]

    operations = [
        migrations.CreateModel(
            name='CreditAccount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('balance_micros', models.BigIntegerField(default=0, help_text='Micro-dollars (cached).')),
                ('held_micros', models.BigIntegerField(default=0, help_text='Micro-dollars held (cached).')),
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='credit_account', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'constraints': [models.CheckConstraint(condition=models.Q(('balance_micros__gte', 0)), name='account_balance_not_negative'), models.CheckConstraint(condition=models.Q(('held_micros__gte', 0), ('held_micros__lte', models.F('balance_micros'))), name='account_held_within_balance')],
            },
        ),
        migrations.RunPython(copy_totals, copy_totals_back),
    ]
