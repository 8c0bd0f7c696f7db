"""`manage.py seed_demo`: the demo superuser (public password) only where DEBUG is on."""

import pytest
from django.core.management import CommandError, call_command

from accounts.management.commands.seed_demo import DEMO_EMAIL
from accounts.models import User


@pytest.mark.django_db
def test_seed_demo_refuses_the_demo_superuser_with_debug_off(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match=r"Refusing to create the demo superuser.*--force"):
        call_command("seed_demo")
    assert not User.objects.filter(email=DEMO_EMAIL).exists()


@pytest.mark.django_db
def test_seed_demo_with_force_creates_it_even_with_debug_off(settings):
    settings.DEBUG = False
    call_command("seed_demo", "--force")
    assert User.objects.get(email=DEMO_EMAIL).is_superuser


@pytest.mark.django_db
def test_seed_demo_creates_the_demo_superuser_in_development(settings):
    settings.DEBUG = True
    call_command("seed_demo")
    call_command("seed_demo")  # idempotent
    user = User.objects.get(email=DEMO_EMAIL)
    assert user.is_superuser and user.check_password("tokenbank-demo")
