from django.core.management.base import BaseCommand

from accounts.models import User

DEMO_EMAIL = "admin@tokenbank.local"
DEMO_PASSWORD = "tokenbank-demo"


class Command(BaseCommand):
    help = "Create the demo staff user (idempotent). The demo models come from a migration."

    def handle(self, *args, **options):
        user, created = User.objects.get_or_create(
            email=DEMO_EMAIL, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
        self.stdout.write(f"Demo staff login: {DEMO_EMAIL} / {DEMO_PASSWORD}")
