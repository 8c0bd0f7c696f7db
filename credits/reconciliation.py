"""The books, every night: `manage.py credits_verify`'s checks over every account, recorded.

The beat task (credits.tasks.reconcile_books) calls `reconcile_books`. It checks the users
in batches of RECONCILIATION_BATCH_SIZE, each batch inside one read-only REPEATABLE READ
snapshot on PostgreSQL: a call settling while a batch is read cannot pass for a mismatch,
and the checks cannot change money (PostgreSQL refuses any write in a read-only
transaction). Then each of settings.LEDGER_RECONCILERS (calls against usage records,
purchases against grants) in a snapshot of its own. The run is recorded (ReconciliationRun);
each mismatch is kept open (LedgerMismatch) until a run no longer finds it, and staff are
emailed once about each new one. A mismatch never changes money: people decide.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from accounts.models import User
from config.observability import metrics
from credits.models import LedgerMismatch, ReconciliationRun
from credits.services import verify_balances
from credits.services.locks import advisory_lock
from credits.staff_mail import email_staff

logger = logging.getLogger(__name__)

RECORD_LOCK_KEY = 0x5245_434E  # pg_advisory_xact_lock key: one run records at a time
_USER = re.compile(r"^user (\d+):")
REPORT_LIMIT = 200  # lines of a run's report kept in its row


@contextlib.contextmanager
def _snapshot():
    """One read-only, repeatable-read transaction (PostgreSQL; elsewhere a plain one)."""
    # Inside a caller's transaction (a test's) the snapshot is that transaction's.
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def reconcile_books(*, batch_size: int | None = None,
                    now: dt.datetime | None = None) -> ReconciliationRun:
    """Check every account, then the other apps' books; record the run and its mismatches;
    email staff once per new mismatch. Changes no money. A run that fails part-way is
    recorded with its error and changes no mismatch (raises the error). Returns the run."""
    batch_size = batch_size or settings.RECONCILIATION_BATCH_SIZE
    run = ReconciliationRun.objects.create(started_at=now or timezone.now())
    found: dict[str, tuple[int | None, str]] = {}
    checked = 0
    try:
        last_id = 0
        while True:
            ids = list(User.objects.filter(pk__gt=last_id).order_by("pk")
                       .values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            with _snapshot():
                for problem in verify_balances(user_ids=ids):
                    found[f"user {problem.user_id}: {problem.what}"] = (problem.user_id, str(problem))
            checked, last_id = checked + len(ids), ids[-1]
        for path in settings.LEDGER_RECONCILERS:
            with _snapshot():
                for problem in import_string(path)():
                    text = str(problem)
                    user = _USER.match(text)
                    found[text[:255]] = (int(user.group(1)) if user else None, text)
    except Exception as exc:
        ReconciliationRun.objects.filter(pk=run.pk).update(
            finished_at=timezone.now(), accounts_checked=checked,
            error=f"{type(exc).__name__}: {exc}"[:2000])
        logger.exception("Reconciliation run %s stopped after %s accounts", run.pk, checked)
        raise
    new = _record(run=run, found=found, checked=checked, now=now or timezone.now())
    metrics.reconciliation_run()
    _report(run=run)
    if found:
        logger.error("BILLING: reconciliation run %s found %s ledger mismatch(es), %s new "
                     "(the admin lists them under Credits > Ledger mismatches)", run.pk,
                     len(found), new)
    else:
        logger.info("Reconciliation run %s: %s accounts, the books balance", run.pk, checked)
    run.refresh_from_db()
    return run


def _record(*, run: ReconciliationRun, found: dict[str, tuple[int | None, str]], checked: int,
            now: dt.datetime) -> int:
    """Open a mismatch for each new key, refresh those still found, close those gone; the
    run's row says what was found. Returns how many were new."""
    with transaction.atomic():
        advisory_lock(RECORD_LOCK_KEY)
        still_open = {m.key: m for m in LedgerMismatch.objects.filter(resolved_at__isnull=True)}
        new = []
        for key, (user_id, description) in found.items():
            if key in still_open:
                LedgerMismatch.objects.filter(pk=still_open[key].pk).update(
                    description=description, last_run=run, last_seen_at=now)
            else:
                new.append(LedgerMismatch(key=key, user_id=user_id, description=description,
                                          first_run=run, last_run=run, first_seen_at=now,
                                          last_seen_at=now))
        LedgerMismatch.objects.bulk_create(new)
        LedgerMismatch.objects.filter(resolved_at__isnull=True).exclude(
            key__in=list(found)).update(resolved_at=now)
        lines = sorted(description for _user, description in found.values())
        report = "\n".join(lines[:REPORT_LIMIT])
        if len(lines) > REPORT_LIMIT:
            report += f"\n... and {len(lines) - REPORT_LIMIT} more (Ledger mismatches)"
        ReconciliationRun.objects.filter(pk=run.pk).update(
            finished_at=timezone.now(), accounts_checked=checked, mismatches=len(found),
            new_mismatches=len(new), report=report)
    return len(new)


def _report(*, run: ReconciliationRun) -> int:
    """Email staff about the open mismatches nobody was told of, once: each is claimed
    first (a concurrent run does not report it again), and unclaimed if the email fails so
    the next run tries again. Returns how many were reported."""
    now = timezone.now()
    due = LedgerMismatch.objects.filter(resolved_at__isnull=True, reported_at__isnull=True)
    claimed = [m for m in due.order_by("user_id", "key")
               if LedgerMismatch.objects.filter(pk=m.pk, reported_at__isnull=True)
               .update(reported_at=now)]
    if not claimed:
        return 0
    lines = [f"- {m.description}" for m in claimed[:REPORT_LIMIT]]
    if len(claimed) > REPORT_LIMIT:
        lines.append(f"- ... and {len(claimed) - REPORT_LIMIT} more")
    body = ("The nightly reconciliation found new ledger mismatches (cached totals, grants, "
            "holds, calls or purchases that disagree with the ledger):\n\n" + "\n".join(lines)
            + "\n\nNothing was changed: the ledger corrects nothing by itself. The admin lists "
            "them under Credits > Ledger mismatches until a run no longer finds them; "
            "`manage.py credits_verify --user <id>` checks one user again.\n")
    sent = email_staff(subject=f"TokenBank: {len(claimed)} new ledger mismatch(es)", body=body)
    if not sent:
        LedgerMismatch.objects.filter(pk__in=[m.pk for m in claimed]).update(reported_at=None)
        return 0
    return len(claimed)
