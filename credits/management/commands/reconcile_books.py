from django.core.management.base import BaseCommand, CommandError

from credits import reconciliation


class Command(BaseCommand):
    help = ("Run the nightly reconciliation now (credits.reconciliation): credits_verify's "
            "checks over every account, recorded in the admin, staff emailed once per new "
            "mismatch; no money is changed. Exits 1 if there is any mismatch.")

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=None,
                            help="Users per snapshot (default RECONCILIATION_BATCH_SIZE).")

    def handle(self, *args, batch_size=None, **options):
        run = reconciliation.reconcile_books(batch_size=batch_size)
        self.stdout.write(f"Run {run.pk}: {run.accounts_checked} accounts checked, "
                          f"{run.mismatches} mismatch(es), {run.new_mismatches} new.")
        if run.mismatches:
            self.stderr.write(run.report)
            raise CommandError(f"{run.mismatches} ledger mismatch(es) found.")
