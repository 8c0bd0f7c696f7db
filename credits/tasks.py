"""Celery doors to the credits services: each takes ids (JSON), calls one
service and is idempotent, so a redelivery after a lost worker is harmless
(acks_late + reject_on_worker_lost). The schedule is settings.CELERY_BEAT_SCHEDULE."""

from __future__ import annotations

import datetime as dt

from celery import shared_task

from credits import notifications, reconciliation, sweeps
from credits.promotion import award, triggers, verification

_IDEMPOTENT = {"acks_late": True, "reject_on_worker_lost": True}


def _moment(now: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(now) if now else None


# Every minute: a run cut by its time limit rolls back only the user in progress;
# the next run carries on. A user that fails is counted and skipped (credits.sweeps).
@shared_task(**_IDEMPOTENT, soft_time_limit=50, time_limit=58)
def expire_credits(now: str | None = None) -> int:
    """Expire the unheld remainder of every grant past its expiry; returns grants expired
    (users that failed are logged with their ids and noted as sweep failures)."""
    return sweeps.run_expiry_sweep(now=_moment(now)).expired


@shared_task(**_IDEMPOTENT, soft_time_limit=50, time_limit=58)
def release_stale_holds() -> int:
    """Settle the holds of calls whose journal went silent for STALE_HOLD_SECONDS (they died
    without settling), for what they delivered; returns holds settled (failures are logged
    with their ids and noted as sweep failures)."""
    return len(sweeps.run_stale_hold_sweep().settled)


@shared_task(**_IDEMPOTENT)
def send_notification(user_id: int, event: str) -> int:
    """Enqueued after a ledger commit; sends each occurrence at most once."""
    return len(notifications.notify(user_id=user_id, event=event))


@shared_task(**_IDEMPOTENT)
def notify_expiring_credits(now: str | None = None) -> int:
    """Daily: tell each user once per grant that credit expires within EXPIRING_SOON_DAYS."""
    return notifications.notify_expiring_soon(now=_moment(now))


@shared_task(**_IDEMPOTENT)
def catch_up_notifications(now: str | None = None) -> int:
    """Every few minutes: send what an enqueue missed (Redis was down); at most once each."""
    return notifications.catch_up(now=_moment(now))


@shared_task(**_IDEMPOTENT, soft_time_limit=240, time_limit=300)
def void_unverified_promotions(now: str | None = None) -> int:
    """Void sign-up credit still awaiting email verification after PROMOTION_VERIFICATION_HOURS."""
    return verification.void_unverified_promotions(now=_moment(now))


@shared_task(**_IDEMPOTENT)
def notify_promotion_paused(promotion_ids: list[int]) -> int:
    """Tell staff a spend cap paused these promotions (once per pause)."""
    return award.notify_staff_promotion_paused(promotion_ids=promotion_ids)


@shared_task(**_IDEMPOTENT)
def send_verification_email(user_id: int) -> bool:
    """The sign-up's email-verification link (PROMOTION_REQUIRE_EMAIL_VERIFICATION)."""
    return verification.send_verification_email_to(user_id=user_id)


# Nightly: one snapshot per batch of users; an interrupted run is recorded with its error
# and the next night starts over (a redelivered run only records again and tells no one twice).
@shared_task(**_IDEMPOTENT, soft_time_limit=3300, time_limit=3600)
def reconcile_books() -> int:
    """credits_verify's checks over every account and the other apps' books; recorded,
    staff emailed once per new mismatch, no money changed. Returns the mismatches found."""
    return reconciliation.reconcile_books().mismatches


@shared_task(**_IDEMPOTENT)
def evaluate_promotions(user_id: int) -> int:
    """Award the user's milestones whose triggers are true and settle their referral;
    returns the grants made (milestones and referral)."""
    done = triggers.evaluate_promotions(user_id=user_id)
    return len(done.milestone_grants) + (2 if done.referral.rewarded_now else 0)
