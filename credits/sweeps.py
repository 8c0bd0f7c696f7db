"""The periodic sweeps as their Celery tasks run them: the ledger's sweep, then its
bookkeeping. A unit (a user, a hold) that fails does not stop a run (the ledger goes on
without it); one that fails SWEEP_FAILURE_REPORT_AFTER runs in a row is listed in the
admin (SweepFailure) and emailed to staff once, instead of being retried in silence
forever. Its row goes when a run no longer fails on it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config.observability import metrics
from credits import services
from credits.models import CreditHold, Sweep, SweepFailure
from credits.services import ExpiryRun, HoldSweep, UnitFailure
from credits.signals import holds_swept
from credits.staff_mail import email_staff

logger = logging.getLogger(__name__)


def run_expiry_sweep(*, now: dt.datetime | None = None) -> ExpiryRun:
    """Expire what is past its expiry (credits.services.expire_credits), then note failures."""
    run = services.expire_credits(now=now)
    note_run(sweep=Sweep.EXPIRE_CREDITS, failed=run.failed)
    metrics.sweep_run(sweep=Sweep.EXPIRE_CREDITS, settled=run.expired, failed=len(run.failed))
    return run


def run_stale_hold_sweep(*, older_than_seconds: int | None = None,
                         now: dt.datetime | None = None) -> HoldSweep:
    """Settle the holds of silent calls (credits.services.release_stale_holds), announce
    them (`holds_swept`: inference records the calls), then note failures."""
    result = services.release_stale_holds(older_than_seconds=older_than_seconds, now=now)
    # Sent even when nothing was settled: a receiver also catches up on what an earlier,
    # interrupted run settled but never announced.
    for receiver, response in holds_swept.send_robust(sender=CreditHold, settled=result.settled,
                                                      now=now or timezone.now()):
        if isinstance(response, Exception):
            logger.error("Stale-hold sweep: %r failed on the settled holds %s", receiver,
                         [str(h.hold_id) for h in result.settled], exc_info=response)
    note_run(sweep=Sweep.STALE_HOLDS, failed=result.failed)
    metrics.sweep_run(sweep=Sweep.STALE_HOLDS, settled=len(result.settled),
                      failed=len(result.failed))
    return result


def note_run(*, sweep: str, failed: Iterable[UnitFailure], now: dt.datetime | None = None) -> int:
    """After a complete run of `sweep`: count one more failure for each unit in `failed`,
    forget the units it no longer failed on, and tell staff (once) about units failing
    SWEEP_FAILURE_REPORT_AFTER runs in a row. Returns how many units were reported now."""
    now = now or timezone.now()
    errors = {f.unit: f.error for f in failed}
    with transaction.atomic():
        SweepFailure.objects.filter(sweep=sweep).exclude(unit__in=list(errors)).delete()
        for unit, error in errors.items():
            row, created = SweepFailure.objects.get_or_create(
                sweep=sweep, unit=unit,
                defaults={"consecutive_failures": 1, "first_failed_at": now, "last_failed_at": now,
                          "last_error": error})
            if not created:
                SweepFailure.objects.filter(pk=row.pk).update(
                    consecutive_failures=F("consecutive_failures") + 1, last_failed_at=now,
                    last_error=error)
    return _report(sweep=sweep, now=now)


def _report(*, sweep: str, now: dt.datetime) -> int:
    due = SweepFailure.objects.filter(
        sweep=sweep, reported_at__isnull=True,
        consecutive_failures__gte=settings.SWEEP_FAILURE_REPORT_AFTER)
    claimed = [row for row in due
               # Claimed first, so a concurrent run does not report it again.
               if SweepFailure.objects.filter(pk=row.pk, reported_at__isnull=True)
               .update(reported_at=now)]
    if not claimed:
        return 0
    label = Sweep(sweep).label
    lines = [f"- {row.unit}: failed {row.consecutive_failures} runs in a row since "
             f"{row.first_failed_at:%Y-%m-%d %H:%M} UTC; last error: {row.last_error}"
             for row in claimed]
    body = (f"The {label.lower()} keeps failing on these units; it goes on with the others "
            "and retries these on every run:\n\n" + "\n".join(lines)
            + "\n\nThe admin lists them under Credits > Sweep failures until a run succeeds.\n")
    email_staff(subject=f"TokenBank: the {label.lower()} keeps failing on {len(claimed)} unit(s)",
                body=body)
    logger.error("%s: reported units failing %s+ runs in a row: %s", label,
                 settings.SWEEP_FAILURE_REPORT_AFTER, [row.unit for row in claimed])
    return len(claimed)
