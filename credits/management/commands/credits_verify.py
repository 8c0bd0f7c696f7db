from django.core.management.base import BaseCommand, CommandError

from credits.services import verify_balances


class Command(BaseCommand):
    help = "Check every user's cached balance and holds against the ledger; exit 1 on a mismatch."

    def add_arguments(self, parser):
        parser.add_argument("--user", type=int, action="append", dest="user_ids",
                            help="Only this user id (repeatable).")

    def handle(self, *args, user_ids=None, **options):
        problems = verify_balances(user_ids=user_ids)
        for problem in problems:
            self.stderr.write(f"MISMATCH {problem}")
        if problems:
            raise CommandError(f"{len(problems)} ledger mismatch(es) found.")
        self.stdout.write(self.style.SUCCESS("Ledger verified: every balance matches its entries."))
