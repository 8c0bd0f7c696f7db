from django.dispatch import receiver

from credits import services
from inference.signals import first_token_generated


@receiver(first_token_generated, dispatch_uid="credits.apply_first_token_promotion")
def apply_promotion_on_first_token(sender, *, user_id: int, **kwargs) -> None:
    services.apply_first_token_promotion(user=user_id)
