from credits.services import verify_balances


def assert_books_balance(*user_ids: int) -> None:
    """What `credits_verify` checks: cached totals agree with the ledger."""
    problems = verify_balances(user_ids=user_ids or None)
    assert problems == [], "\n".join(map(str, problems))


def seed_demo_models() -> None:
    """Transactional tests flush every table, the migration's demo models included: put them back."""
    import importlib

    from django.apps import apps

    importlib.import_module("inference.migrations.0002_seed_demo_models").seed(apps, None)
