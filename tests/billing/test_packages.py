import importlib

from django.apps import apps

from billing.models import CreditPackage
from tests.billing.conftest import USD

seeding = importlib.import_module("billing.migrations.0002_seed_credit_packages")


def test_data_migration_seeds_packages_of_10_25_and_100_dollars_once(db):
    CreditPackage.objects.all().delete()  # transactional tests elsewhere may have flushed them

    seeding.seed(apps, None)
    seeding.seed(apps, None)

    amounts = CreditPackage.objects.filter(is_active=True).values_list("amount_micros", flat=True)
    assert list(amounts) == [10 * USD, 25 * USD, 100 * USD]
