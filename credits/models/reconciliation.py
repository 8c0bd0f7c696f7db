"""The nightly reconciliation's record (credits.reconciliation): its runs, and the
mismatches it found from the first run that found each to the first that no longer does."""

from django.db import models
from django.db.models import Q


class ReconciliationRun(models.Model):
    """One run of the nightly reconciliation: when, how many accounts it checked, what it
    found. Written by credits.reconciliation only; staff read it in the admin."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True,
                                       help_text="Empty while running, or if the run died.")
    accounts_checked = models.PositiveIntegerField(default=0)
    mismatches = models.PositiveIntegerField(default=0)
    new_mismatches = models.PositiveIntegerField(
        default=0, help_text="Mismatches no earlier run had found (staff were emailed).")
    report = models.TextField(blank=True, help_text="The mismatches found, one per line.")
    error = models.TextField(blank=True, help_text="Why the run stopped part-way, if it did.")

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["finished_at"], name="reconciliation_finished_idx")]

    def __str__(self) -> str:
        return f"Reconciliation of {self.started_at:%Y-%m-%d %H:%M} UTC"


class LedgerMismatch(models.Model):
    """A mismatch between the cached totals and the ledger (or another of credits_verify's
    checks), open from the run that first found it until a run no longer does. Staff are
    emailed once, when it is new; finding it never changes money."""

    key = models.CharField(max_length=255, help_text="What identifies it from run to run.")
    user_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    description = models.TextField(help_text="As the latest run found it (expected, found).")
    first_run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="+")
    last_run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="+")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True,
                                       help_text="The run that no longer found it.")
    reported_at = models.DateTimeField(null=True, blank=True, help_text="Staff were emailed.")

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        verbose_name_plural = "ledger mismatches"
        constraints = [
            models.UniqueConstraint(fields=["key"], condition=Q(resolved_at__isnull=True),
                                    name="ledger_mismatch_one_open_per_key"),
        ]

    def __str__(self) -> str:
        return self.key
