"""Staff review of flagged sign-up credit: confirm it, or claw back what is left of it."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from credits import notices, services
from credits.exceptions import GrantNotActive
from credits.models import EntryType, LedgerEntry, PromotionReview, ReviewStatus


def confirm_review(*, review: PromotionReview, actor: User, note: str = "") -> PromotionReview:
    """Staff looked and the grant stands. Only a FLAGGED review can be decided
    (ValidationError otherwise)."""
    with transaction.atomic():
        locked = _lock_flagged(review)
        return _decide(locked, status=ReviewStatus.CONFIRMED, actor=actor, note=note)


CLAWBACK_CUSTOMER_NOTE = "Promotional credit reversed after review"


def claw_back(*, review: PromotionReview, actor: User, reason: str,
              customer_note: str = "") -> PromotionReview:
    """Void what is left of the flagged promotional grant (a VOID entry carrying the
    staff member, the internal `reason` for staff only, and the `customer_note` the customer
    reads, CLAWBACK_CUSTOMER_NOTE when empty). Only that grant is touched: purchased or other
    credit never is. Credit held by an in-flight call is voided when the call settles;
    credit already spent stays spent. `clawed_back_micros` records what was voided now.
    The customer is told (a CREDIT_REMOVED notice, after the commit)."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("A reason is required to claw credit back.")
    with transaction.atomic():
        locked = _lock_flagged(review)
        voided = 0
        try:
            services.void_grant(grant=locked.grant_id, actor=actor,
                                reason=(customer_note or "").strip()[:255]
                                or CLAWBACK_CUSTOMER_NOTE,
                                internal_reason=f"Clawback: {reason}")
            notices.enqueue_staff_notice(user_id=locked.user_id, kind="CLAWBACK")
            voided = LedgerEntry.objects.filter(
                grant_id=locked.grant_id, entry_type=EntryType.VOID,
                operation_key=f"void:{locked.grant_id}",
            ).aggregate(total=Sum("amount_micros"))["total"] or 0
        except GrantNotActive:
            pass  # already voided (e.g. never verified): nothing left to take
        locked.clawed_back_micros = -voided
        return _decide(locked, status=ReviewStatus.CLAWED_BACK, actor=actor, note=reason)


def _lock_flagged(review: PromotionReview) -> PromotionReview:
    locked = PromotionReview.objects.select_for_update().get(pk=review.pk)
    if locked.status != ReviewStatus.FLAGGED:
        raise ValidationError(f"This review was already decided ({locked.get_status_display()}).")
    return locked


def _decide(review: PromotionReview, *, status: str, actor: User, note: str) -> PromotionReview:
    review.status = status
    review.decided_by = actor
    review.decided_at = timezone.now()
    review.note = (note or "")[:255]
    review.save(update_fields=["status", "decided_by", "decided_at", "note", "clawed_back_micros"])
    return review
