from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models import Q

from accounts.emails import canonical_email


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra_fields):
        if not email:
            raise ValueError("An email address is required.")
        email = self.normalize_email(email).lower()
        user = self.model(email=email, email_normalized=canonical_email(email), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email: str, password: str | None = None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra_fields)


class User(AbstractUser):
    """A customer or staff member; the email address is the login."""

    username = None
    email = models.EmailField("email address", unique=True)
    # accounts.emails.canonical_email(email), set at sign-up: one account per person-ish
    # address. Empty only for old accounts that collided with an older one's form.
    email_normalized = models.CharField(
        max_length=254, unique=True, null=True, blank=True, editable=False
    )
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # When the verification link was last emailed: resends are at most one a minute
    # (credits.promotion.verification.resend_verification claims it with a conditional UPDATE).
    verification_email_sent_at = models.DateTimeField(null=True, blank=True, editable=False)

    first_token_at = models.DateTimeField(null=True, blank=True)
    promotion_eligible = models.BooleanField(
        default=True, help_text="May still earn the first-token promotion."
    )
    promotion_claimed = models.BooleanField(default=False)
    # Why the promotion was withheld (velocity limits, a claimed address...): shown to the user.
    promotion_withheld_reason = models.CharField(max_length=255, blank=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~(Q(promotion_claimed=True) & Q(first_token_at__isnull=True)),
                name="user_promotion_claimed_needs_first_token",
            ),
        ]

    def __str__(self) -> str:
        return self.email

    # The cached credit totals live on the user's credit account (credits.CreditAccount),
    # written only by the ledger; these read them (0 before the account exists).
    @property
    def credit_balance(self) -> int:
        return self._credit_account_value("balance_micros")

    @property
    def credit_held(self) -> int:
        return self._credit_account_value("held_micros")

    def _credit_account_value(self, field: str) -> int:
        try:
            return getattr(self.credit_account, field)
        except ObjectDoesNotExist:
            return 0

    def save(self, *args, **kwargs):
        if self._state.adding and self.email_normalized is None and self.email:
            self.email_normalized = canonical_email(self.email)  # e.g. users added in admin
        super().save(*args, **kwargs)


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A secret for `Authorization: Bearer sk-...`.

    Only the SHA-256 of the secret is stored (the secret carries 256 random bits,
    so a pepper adds nothing); `prefix` and `last_four` let people recognise it.
    Revoking stamps `revoked_at`; the row stays for the usage records that name it.
    """

    user = models.ForeignKey("accounts.User", on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The key's first characters, for display.")
    last_four = models.CharField(max_length=4)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Per-key overrides of RATE_LIMIT_REQUESTS_PER_MINUTE / RATE_LIMIT_TOKENS_PER_MINUTE
    # (accounts.throttles): empty = the setting, 0 = no limit for this key.
    rate_limit_requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="requests per minute",
        help_text="Empty: the site's default (RATE_LIMIT_REQUESTS_PER_MINUTE). 0: no limit.")
    rate_limit_tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="tokens per minute",
        help_text="Empty: the site's default (RATE_LIMIT_TOKENS_PER_MINUTE). 0: no limit. "
                  "A call counts its prompt and max_tokens when admitted, its real usage "
                  "once it ends.")

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"{self.prefix}…{self.last_four}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
