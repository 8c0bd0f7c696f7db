"""The periodic sweeps' memory of units (a user, a hold) they could not settle."""

from django.db import models


class Sweep(models.TextChoices):
    EXPIRE_CREDITS = "expire_credits", "Credit expiry"
    STALE_HOLDS = "release_stale_holds", "Stale-hold sweep"


class SweepFailure(models.Model):
    """A unit a sweep failed on, run after run; staff are told once it has failed
    SWEEP_FAILURE_REPORT_AFTER runs in a row. Written by credits.sweeps only; the row goes
    when a complete run no longer fails on the unit."""

    sweep = models.CharField(max_length=32, choices=Sweep.choices)
    unit = models.CharField(max_length=80, help_text="user:<id> or hold:<uuid>")
    consecutive_failures = models.PositiveIntegerField(default=0)
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    last_error = models.TextField(blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_failed_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["sweep", "unit"], name="sweep_failure_one_per_unit"),
        ]

    def __str__(self) -> str:
        return f"{self.get_sweep_display()} failing on {self.unit}"
