import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from credits.services import expire_credits


class Command(BaseCommand):
    help = (
        "Expire the unheld remainder of every grant past its expiry (the same service as "
        "the every-minute Celery task). Safe to run any time, repeatedly or concurrently."
    )

    def add_arguments(self, parser):
        parser.add_argument("--now", help="ISO 8601 moment to expire as of (default: now).")

    def handle(self, *args, now=None, **options):
        moment = None
        if now:
            try:
                moment = dt.datetime.fromisoformat(now)
            except ValueError as exc:
                raise CommandError(f"--now: {exc}") from exc
            if moment.tzinfo is None:
                raise CommandError("--now needs a timezone, e.g. 2026-01-01T00:00:00+00:00")
            if moment > timezone.now():
                # Expiry cannot be undone: a typo must not expire live credit early.
                raise CommandError(f"--now {now} is in the future; expiry runs as of now or before.")
        run = expire_credits(now=moment)
        self.stdout.write(self.style.SUCCESS(f"Expired {run.expired} grant(s)."))
        for failure in run.failed:
            self.stderr.write(f"Failed on {failure.unit}: {failure.error}")
