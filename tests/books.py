"""Assertions about the books, shared by tests of every app."""

from credits import services

USD = 1_000_000


def assert_books_balance(*user_ids: int) -> None:
    """credits_verify's checks: cached totals == entries == grants == holds."""
    problems = services.verify_balances(user_ids=user_ids or None)
    assert problems == [], "\n".join(map(str, problems))
