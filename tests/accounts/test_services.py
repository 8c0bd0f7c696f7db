import pytest
from django.core.exceptions import ValidationError

from accounts.models import ApiKey, User
from accounts.services import (
    create_api_key,
    get_user_for_api_key,
    hash_api_key,
    register_user,
    revoke_api_key,
)


@pytest.mark.django_db
def test_register_user_creates_user_and_a_key_whose_secret_is_not_stored():
    user, key, secret = register_user(email="  Grace@Example.com ", password="a-long-passphrase-42")
    assert user.email == "grace@example.com"
    assert user.check_password("a-long-passphrase-42")
    assert secret.startswith("sk-") and len(secret) > 40
    assert key.key_hash == hash_api_key(secret) and secret not in key.key_hash
    assert key.prefix == secret[:10] and key.last_four == secret[-4:]
    assert get_user_for_api_key(secret) == key


@pytest.mark.django_db
def test_register_user_refuses_duplicate_email_case_insensitively(user):
    with pytest.raises(ValidationError) as exc:
        register_user(email="ADA@example.com", password="a-long-passphrase-42")
    assert "already exists" in exc.value.message_dict["email"][0]
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_register_user_reports_each_bad_field_and_creates_nothing():
    with pytest.raises(ValidationError) as exc:
        register_user(email="not-an-email", password="123")
    errors = exc.value.message_dict
    assert errors["email"] == ["Enter a valid email address."]
    assert any("too short" in m for m in errors["password"])
    assert not User.objects.exists() and not ApiKey.objects.exists()


@pytest.mark.django_db
def test_revoked_key_stops_authenticating_and_other_keys_keep_working(user):
    first, first_secret = create_api_key(user=user, name="laptop")
    second, second_secret = create_api_key(user=user, name="server")
    revoke_api_key(api_key=first, user=user)
    assert get_user_for_api_key(first_secret) is None
    assert get_user_for_api_key(second_secret) == second
    assert get_user_for_api_key(second_secret + "x") is None


@pytest.mark.django_db
def test_revoking_someone_elses_key_is_refused(user, make_user):
    key, secret = create_api_key(user=user, name="mine")
    with pytest.raises(ApiKey.DoesNotExist):
        revoke_api_key(api_key=key, user=make_user())
    assert get_user_for_api_key(secret) == key
