from billing.models import CreditPackage
from tests.books import USD
from tests.seeds import seed_credit_packages


def test_data_migration_seeds_packages_of_10_25_and_100_dollars_once(db):
    CreditPackage.objects.all().delete()  # transactional tests elsewhere may have flushed them

    seed_credit_packages()
    seed_credit_packages()

    amounts = CreditPackage.objects.filter(is_active=True).values_list("amount_micros", flat=True)
    assert list(amounts) == [10 * USD, 25 * USD, 100 * USD]
