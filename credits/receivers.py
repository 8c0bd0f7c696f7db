"""The credits app's doors for other apps' signals: each calls one service."""

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.signals import user_registered
from billing.signals import purchase_paid
from credits.models import CreditAccount, PromotionTier
from credits.promotion import milestones, referrals, signup, terms, triggers, verification
from credits.signals import paid_call_settled
from inference.signals import first_token_generated


@receiver(first_token_generated, dispatch_uid="credits.apply_first_token_promotion")
def apply_promotion_on_first_token(sender, *, user_id: int, **kwargs) -> None:
    triggers.first_token(user_id=user_id)


@receiver(purchase_paid, dispatch_uid="credits.promotions_on_purchase")
def promotions_on_purchase(sender, *, user_id: int, payment_fingerprint: str = "",
                           **kwargs) -> None:
    """In the purchase's transaction: milestones and the referral, evaluated after commit."""
    triggers.purchase_paid(user_id=user_id, payment_fingerprint=payment_fingerprint)


@receiver(paid_call_settled, dispatch_uid="credits.milestones_on_paid_call")
def milestones_on_paid_call(sender, *, user_id: int, **kwargs) -> None:
    triggers.paid_call(user_id=user_id)


@receiver(post_save, sender=PromotionTier, dispatch_uid="credits.usage_tiers_saved")
@receiver(post_delete, sender=PromotionTier, dispatch_uid="credits.usage_tiers_deleted")
def usage_tiers_changed(sender, **kwargs) -> None:
    """Paid calls ask a remembered "any usage tier?": ask again once the change is committed
    (asked before, a call could remember the old answer)."""
    transaction.on_commit(milestones.forget_usage_tiers)


# Opening the (empty) credit account and assigning a promotion variant are not ledger
# rows, so post_save is the right door
# (it also covers users made in the admin or the shell).
@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="credits.assign_promotion")
def assign_promotion_on_sign_up(sender, *, instance, created: bool, raw: bool = False,
                                **kwargs) -> None:
    if created and not raw:
        # By id: naming the instance would cache this empty account on it, stale after a grant.
        CreditAccount.objects.get_or_create(user_id=instance.pk)  # empty: the ledger fills it
        terms.assign_promotion(user=instance)


@receiver(user_registered, dispatch_uid="credits.record_signup")
def record_signup_on_registration(sender, *, user, client_ip: str | None,
                                  referral_code: str = "", **kwargs) -> None:
    """In the registration's transaction: velocity limits, the referral's attribution, then
    the verification email."""
    signup.record_signup(user=user, ip=client_ip)
    referrals.attribute_referral(user=user, code=referral_code)
    verification.schedule_verification_email(user=user)
