"""Account rules: registering a customer and managing their API keys."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets

from django.conf import settings
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from accounts.emails import canonical_email
from accounts.models import ApiKey, User
from accounts.signals import user_registered
from config.rows import columns, fetch

API_KEY_PREFIX = "sk-"
DEFAULT_KEY_NAME = "Default key"
ACCOUNT_EXISTS = "An account with this email address already exists."
# last_used_at is a hint for people, not an audit trail: write it at most this often.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(*, user: User, name: str) -> tuple[ApiKey, str]:
    """A new key for `user`. Returns (key, secret); the secret is never stored or shown again."""
    name = (name or "").strip()[:100] or DEFAULT_KEY_NAME
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=secret[:10],
        last_four=secret[-4:],
        key_hash=hash_api_key(secret),
    )
    return key, secret


def revoke_api_key(*, api_key: ApiKey, user: User) -> ApiKey:
    """Revoke one of `user`'s keys, at once and for good. Idempotent.

    Raises ApiKey.DoesNotExist when the key belongs to someone else.
    """
    if api_key.user_id != user.pk:
        raise ApiKey.DoesNotExist("No such API key.")
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def get_user_for_api_key(secret: str) -> ApiKey | None:
    """The active key matching `secret` (with its user), or None.

    The lookup is by hash, so the secret is never compared byte by byte with
    stored data; the final comparison is constant-time anyway.
    """
    if not secret.startswith(API_KEY_PREFIX) or len(secret) > 200:
        return None
    digest = hash_api_key(secret)
    rows = fetch(_key_lookup_sql(), [digest], ApiKey, User)  # every call: hand-written SQL
    if not rows:
        return None
    key, user = rows[0]
    if not secrets.compare_digest(key.key_hash, digest):
        return None
    key.user = user
    return key


@functools.cache
def _key_lookup_sql() -> str:
    """An active key by its hash, with its user: one query."""
    return (f"SELECT {columns(ApiKey, 'k')}, {columns(User, 'u')} "
            f"FROM {ApiKey._meta.db_table} k JOIN {User._meta.db_table} u ON u.id = k.user_id "
            "WHERE k.key_hash = %s AND k.revoked_at IS NULL")


def touch_api_key(*, api_key: ApiKey, now: dt.datetime | None = None) -> None:
    """Record that the key was used (at most once a minute, to keep calls cheap)."""
    now = now or timezone.now()
    if api_key.last_used_at and now - api_key.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    api_key.last_used_at = now


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def run_signup_checks(email: str) -> None:
    """Run settings.SIGNUP_CHECKS on a well-formed address; each raises ValidationError."""
    for path in settings.SIGNUP_CHECKS:
        import_string(path)(email)


def register_user(
    *, email: str, password: str, client_ip: str | None = None, referral_code: str = ""
) -> tuple[User, ApiKey, str]:
    """Create a customer and their first API key, atomically.

    Raises django ValidationError with per-field messages ({"email": [...],
    "password": [...]}) for a malformed or taken email (case-insensitive, and by
    its normalized form: accounts.emails), a disposable email domain, or a weak
    password; nothing is created then. The promotion window starts at
    `date_joined`, i.e. now. The address is also checked by each callable listed in
    settings.SIGNUP_CHECKS (as AUTH_PASSWORD_VALIDATORS are), which raise
    ValidationError({"email": [...]}). `client_ip` (accounts.network.client_ip) rides on
    the `user_registered` signal, sent in the sign-up's transaction (the promotion's
    velocity limits listen), as does `referral_code` (the code of the link the person came
    by, "" for none; the referral programme listens).
    """
    email = normalize_email(email)
    errors: dict[str, list[str]] = {}
    if not email:
        errors["email"] = ["An email address is required."]
    else:
        try:
            validate_email(email)
            run_signup_checks(email)
        except ValidationError as exc:
            errors["email"] = (list(exc.message_dict.get("email", []))
                               if hasattr(exc, "error_dict") else ["Enter a valid email address."])
    if "email" not in errors and (
        User.objects.filter(email__iexact=email).exists()
        or User.objects.filter(email_normalized=canonical_email(email)).exists()
    ):
        errors["email"] = [ACCOUNT_EXISTS]
    if not password:
        errors["password"] = ["A password is required."]
    else:
        try:
            password_validation.validate_password(password, user=User(email=email))
        except ValidationError as exc:
            errors["password"] = list(exc.messages)
    if errors:
        raise ValidationError(errors)
    try:
        with transaction.atomic():
            user = User.objects.create_user(email, password)
            key, secret = create_api_key(user=user, name=DEFAULT_KEY_NAME)
            user_registered.send(sender=User, user=user, client_ip=client_ip,
                                 referral_code=referral_code or "")
    except IntegrityError:
        # Lost a race with a concurrent registration of the same (normalized) address.
        raise ValidationError({"email": [ACCOUNT_EXISTS]}) from None
    return user, key, secret
