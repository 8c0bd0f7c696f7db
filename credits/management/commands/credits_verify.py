from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from credits.services import verify_balances


class Command(BaseCommand):
    help = ("Check every account's cached totals and holds against the ledger, then each of "
            "settings.LEDGER_RECONCILERS (calls against usage records, purchases against "
            "grants); print each mismatch and exit 1 if there is any.")

    def add_arguments(self, parser):
        parser.add_argument("--user", type=int, action="append", dest="user_ids",
                            help="Only this user id (repeatable; the balances check only).")

    def handle(self, *args, user_ids=None, **options):
        problems = [str(p) for p in verify_balances(user_ids=user_ids)]
        if not user_ids:
            # Other apps' books, named in settings (credits imports neither of them).
            for path in settings.LEDGER_RECONCILERS:
                problems += [str(p) for p in import_string(path)()]
        for problem in problems:
            self.stderr.write(f"MISMATCH {problem}")
        if problems:
            raise CommandError(f"{len(problems)} ledger mismatch(es) found.")
        self.stdout.write(self.style.SUCCESS(
            "Ledger verified: every balance matches its entries, every call its usage record, "
            "every purchase its grant."))
