import pytest

from tests.seeds import seed_default_promotion, seed_demo_models


@pytest.fixture
def seed_data(transactional_db):
    """What data migrations seed (the demo models, the default promotion): transactional
    tests that ran earlier flushed them."""
    seed_demo_models()
    seed_default_promotion()
