"""The default first-token promotion (its terms follow the PROMOTION_* settings until
staff set them in admin; one variant; every existing user assigned to it) and the
staff groups "Support" and "Finance"."""

from django.db import migrations

from credits.migrations._staff_groups import grant_group_permissions
from django.utils import timezone

DEFAULT_PROMOTION = "First-token promotion"

SUPPORT_PERMISSIONS = [
    ("credits", "grant_credit"), ("credits", "refund_credit"), ("credits", "revoke_api_keys"),
    ("accounts", "view_user"), ("credits", "view_creditgrant"), ("credits", "view_ledgerentry"),
    ("credits", "view_credithold"), ("credits", "view_staffaction"), ("credits", "view_promotion"),
    ("credits", "view_promotionvariant"),
]
FINANCE_PERMISSIONS = SUPPORT_PERMISSIONS + [
    ("credits", "adjust_credit"), ("credits", "void_grant"), ("credits", "change_grant_expiry"),
    ("credits", "exceed_support_limit"),
    ("credits", "add_promotion"), ("credits", "change_promotion"),
    ("credits", "add_promotionvariant"), ("credits", "change_promotionvariant"),
    ("credits", "delete_promotionvariant"), ("credits", "view_promotionassignment"),
]


def create_default_promotion(apps, schema_editor):
    Promotion = apps.get_model("credits", "Promotion")
    PromotionVariant = apps.get_model("credits", "PromotionVariant")
    PromotionAssignment = apps.get_model("credits", "PromotionAssignment")
    User = apps.get_model("accounts", "User")
    now = timezone.now()
    promotion, created = Promotion.objects.get_or_create(
        name=DEFAULT_PROMOTION,
        defaults={
            "kind": "FIRST_TOKEN",
            "is_active": True,
            "active_from": now.replace(year=2000, month=1, day=1),
            # Empty terms follow the PROMOTION_* settings until staff set them here.
        },
    )
    variant, _ = PromotionVariant.objects.get_or_create(
        promotion=promotion, name="default", defaults={"weight": 1}
    )
    PromotionAssignment.objects.bulk_create(
        [
            PromotionAssignment(user_id=user_id, promotion=promotion, variant=variant,
                                assigned_at=now)
            for user_id in User.objects.filter(promotion_assignment__isnull=True)
            .values_list("pk", flat=True)
        ],
        batch_size=1000,
    )


def create_groups(apps, schema_editor):
    grant_group_permissions(apps, {"Support": SUPPORT_PERMISSIONS, "Finance": FINANCE_PERMISSIONS})


class Migration(migrations.Migration):
    dependencies = [
        ("credits", "0004_promotions_staff_actions"),
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [
        migrations.RunPython(create_default_promotion, migrations.RunPython.noop),
        migrations.RunPython(create_groups, migrations.RunPython.noop),
    ]
