from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import User

DEMO_EMAIL = "admin@tokenbank.local"
DEMO_PASSWORD = "tokenbank-demo"


class Command(BaseCommand):
    help = "Create the demo staff user (idempotent). The demo models come from a migration."

    def add_arguments(self, parser):
        parser.add_argument(
            "--force", action="store_true",
            help="Create the demo superuser even with DEBUG off (its password is public).",
        )

    def handle(self, *args, **options):
        # The demo password is printed here and written in the README: never a silent
        # superuser on a production database.
        if not settings.DEBUG and not options["force"]:
            raise CommandError(
                f"Refusing to create the demo superuser {DEMO_EMAIL} with DEBUG off: its password "
                "is public. Create a real one with `manage.py createsuperuser`, or pass --force "
                "if this really is a demo."
            )
        user, created = User.objects.get_or_create(
            email=DEMO_EMAIL, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
        self.stdout.write(f"Demo staff login: {DEMO_EMAIL} / {DEMO_PASSWORD}")
