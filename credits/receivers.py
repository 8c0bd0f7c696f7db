from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from credits import promotions, services
from inference.signals import first_token_generated


@receiver(first_token_generated, dispatch_uid="credits.apply_first_token_promotion")
def apply_promotion_on_first_token(sender, *, user_id: int, **kwargs) -> None:
    services.apply_first_token_promotion(user=user_id)


# Assigning a promotion variant is not a ledger row, so post_save is the right door.
@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="credits.assign_promotion")
def assign_promotion_on_sign_up(sender, *, instance, created: bool, raw: bool = False,
                                **kwargs) -> None:
    if created and not raw:
        promotions.assign_promotion(user=instance)
