"""The credit totals now live on credits.CreditAccount (copied there by credits.0009)."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_verification_email_sent_at'),
        ('credits', '0009_credit_account'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='user',
            name='user_credit_balance_not_negative',
        ),
        migrations.RemoveConstraint(
            model_name='user',
            name='user_credit_held_within_balance',
        ),
        migrations.RemoveField(
            model_name='user',
            name='credit_balance',
        ),
        migrations.RemoveField(
            model_name='user',
            name='credit_held',
        ),
    ]
