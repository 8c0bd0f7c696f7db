from django.db import migrations, models


class Migration(migrations.Migration):
    """The stored response becomes text holding serialized JSON: PostgreSQL's jsonb refused
    an answer holding "\\u0000" after the call was charged. Existing rows are kept: on
    PostgreSQL the column is cast (jsonb::text is valid JSON); SQLite stored text already."""

    dependencies = [
        ("inference", "0002_seed_demo_models"),
    ]

    operations = [
        migrations.RenameField(
            model_name="idempotentrequest",
            old_name="response_body",
            new_name="response_json",
        ),
        migrations.AlterField(
            model_name="idempotentrequest",
            name="response_json",
            field=models.TextField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="idempotentrequest",
            name="request_id",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
