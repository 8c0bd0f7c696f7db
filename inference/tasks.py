from celery import shared_task

from inference import idempotency


@shared_task(acks_late=True, reject_on_worker_lost=True)
def purge_idempotency_records() -> int:
    """Hourly: forget Idempotency-Key responses past their time to live (idempotent)."""
    return idempotency.purge_idempotency_records()
