import importlib

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Group

from accounts.models import User

_groups_migration = importlib.import_module(
    "credits.migrations.0005_default_promotion_and_staff_groups")
_more_permissions = importlib.import_module(
    "credits.migrations.0006_variant_weight_zero_and_more_staff_permissions")
_billing_permissions = importlib.import_module("billing.migrations.0003_staff_group_permissions")


@pytest.fixture
def staff_groups(db):
    """The groups exactly as the migration builds them (a transactional test's flush
    may have emptied the table, so build them again, idempotently)."""
    _groups_migration.create_groups(global_apps, None)
    _more_permissions.add_permissions(global_apps, None)
    _billing_permissions.add_permissions(global_apps, None)
    return {name: Group.objects.get(name=name) for name in ("Support", "Finance")}


@pytest.fixture
def make_staff(db, staff_groups):
    def make(email: str, *groups: str, superuser: bool = False) -> User:
        staff = User.objects.create_user(email, "correct-horse-battery", is_staff=True,
                                         is_superuser=superuser)
        for name in groups:
            staff.groups.add(staff_groups[name])
        return User.objects.get(pk=staff.pk)  # fresh permission cache

    return make


@pytest.fixture
def support(make_staff) -> User:
    return make_staff("support@tokenbank.test", "Support")


@pytest.fixture
def finance(make_staff) -> User:
    return make_staff("finance@tokenbank.test", "Finance")


@pytest.fixture
def finance2(make_staff) -> User:
    return make_staff("finance2@tokenbank.test", "Finance")


@pytest.fixture
def bare_staff(make_staff) -> User:
    """Staff with no group: may log in to admin, may not move money."""
    return make_staff("intern@tokenbank.test")
