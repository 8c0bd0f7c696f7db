import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class GrantKind(models.TextChoices):
    PROMOTIONAL = "PROMOTIONAL", "Promotional"
    PURCHASED = "PURCHASED", "Purchased"
    REFUND = "REFUND", "Refund"
    ADJUSTMENT = "ADJUSTMENT", "Adjustment"
    REFERRAL = "REFERRAL", "Referral"


class CreditGrant(models.Model):
    """A lot of credit. `remaining_micros` and `held_micros` move only through
    credits.services, each move mirrored by a LedgerEntry on this grant."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="credit_grants"
    )
    kind = models.CharField(max_length=16, choices=GrantKind.choices)
    amount_micros = models.BigIntegerField()
    remaining_micros = models.BigIntegerField()
    held_micros = models.BigIntegerField(default=0)
    granted_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    voided_at = models.DateTimeField(null=True, blank=True)
    description = models.CharField(max_length=255, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    idempotency_key = models.CharField(max_length=200)
    # Where it came from: a promotion, a payment, a support ticket...
    source_reference = models.CharField(max_length=200, blank=True)
    # The promotion arm a promotional grant was awarded under (credits.promotions).
    promotion_variant = models.ForeignKey(
        "PromotionVariant", null=True, blank=True, on_delete=models.PROTECT, related_name="grants"
    )
    # Promotional credit earned while PROMOTION_REQUIRE_EMAIL_VERIFICATION is on: counted in
    # the balance but not spendable until the user verifies their email (credits.abuse).
    awaiting_verification = models.BooleanField(default=False)

    class Meta:
        ordering = ["granted_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"], name="grant_idempotency_key_unique_per_user"
            ),
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="grant_amount_positive"),
            models.CheckConstraint(
                condition=Q(remaining_micros__gte=0) & Q(remaining_micros__lte=F("amount_micros")),
                name="grant_remaining_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(held_micros__gte=0) & Q(held_micros__lte=F("remaining_micros")),
                name="grant_held_within_remaining",
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="grant_expires_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} grant #{self.pk} for {self.user_id}"

    @property
    def free_micros(self) -> int:
        return self.remaining_micros - self.held_micros

    def is_usable_at(self, moment) -> bool:
        return self.voided_at is None and (self.expires_at is None or self.expires_at > moment)

    def is_spendable_at(self, moment) -> bool:
        """Usable, and not waiting for an email verification: what a new debit or hold may draw."""
        return not self.awaiting_verification and self.is_usable_at(moment)


class EntryType(models.TextChoices):
    GRANT = "GRANT", "Grant"
    USAGE = "USAGE", "Usage"
    HOLD = "HOLD", "Hold"
    CAPTURE = "CAPTURE", "Capture"
    RELEASE = "RELEASE", "Release"
    EXPIRY = "EXPIRY", "Expiry"
    VOID = "VOID", "Void"
    REFUND = "REFUND", "Refund"
    ADJUSTMENT = "ADJUSTMENT", "Adjustment"
    # Amount 0: records a staff change of the grant's expiry (credits.services.change_grant_expiry).
    EXPIRY_CHANGE = "EXPIRY_CHANGE", "Expiry change"


class ImmutableEntryError(Exception):
    pass


class LedgerEntryQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ImmutableEntryError("Ledger entries are append-only; write a correcting entry.")

    def delete(self):
        raise ImmutableEntryError("Ledger entries are append-only; write a correcting entry.")


class LedgerEntry(models.Model):
    """One movement of credit. Append-only: never updated, never deleted
    (enforced here and, on PostgreSQL, by a trigger)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    entry_type = models.CharField(max_length=16, choices=EntryType.choices)
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    hold = models.ForeignKey(
        "CreditHold", null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    # Signed change to the balance, and to the held amount (holds move only the latter).
    amount_micros = models.BigIntegerField()
    held_change_micros = models.BigIntegerField(default=0)
    balance_after_micros = models.BigIntegerField()
    description = models.CharField(max_length=255, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    reference = models.CharField(max_length=200, blank=True, db_index=True)
    # The key of the service call that wrote this entry, and this entry's own key.
    operation_key = models.CharField(max_length=200)
    idempotency_key = models.CharField(max_length=220)
    created_at = models.DateTimeField()

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"], name="entry_idempotency_key_unique_per_user"
            ),
            models.CheckConstraint(
                condition=Q(balance_after_micros__gte=0), name="entry_balance_after_not_negative"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "operation_key"], name="entry_user_operation_idx"),
            models.Index(fields=["user", "-created_at"], name="entry_user_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.entry_type} {self.amount_micros} for {self.user_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableEntryError("Ledger entries are append-only; write a correcting entry.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableEntryError("Ledger entries are append-only; write a correcting entry.")


class HoldStatus(models.TextChoices):
    ACTIVE = "ACTIVE", "Active"
    CAPTURED = "CAPTURED", "Captured"
    RELEASED = "RELEASED", "Released"


class CreditHold(models.Model):
    """Credit reserved for work whose cost is known only afterwards.

    The reserved part is spread over grants by HOLD entries; `pending_promotion_micros`
    is reserved against a first-token promotion not granted yet (moved onto the
    promotional grant when it is)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="credit_holds"
    )
    amount_micros = models.BigIntegerField()
    pending_promotion_micros = models.BigIntegerField(default=0)
    captured_micros = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=HoldStatus.choices, default=HoldStatus.ACTIVE)
    reference = models.CharField(max_length=200, blank=True, db_index=True)
    idempotency_key = models.CharField(max_length=200)
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"], name="hold_idempotency_key_unique_per_user"
            ),
            models.CheckConstraint(condition=Q(amount_micros__gt=0), name="hold_amount_positive"),
            models.CheckConstraint(
                condition=Q(pending_promotion_micros__gte=0)
                & Q(pending_promotion_micros__lte=F("amount_micros")),
                name="hold_pending_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(captured_micros__gte=0) & Q(captured_micros__lte=F("amount_micros")),
                name="hold_captured_within_amount",
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="hold_status_created_idx")]

    def __str__(self) -> str:
        return f"Hold {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status == HoldStatus.ACTIVE


class NotificationEvent(models.TextChoices):
    PROMOTION_GRANTED = "PROMOTION_GRANTED", "Promotional credit granted"
    CREDITS_EXPIRING = "CREDITS_EXPIRING", "Credits expiring soon"
    CREDITS_EXPIRED = "CREDITS_EXPIRED", "Credits expired"
    LOW_BALANCE = "LOW_BALANCE", "Low balance"
    BALANCE_EXHAUSTED = "BALANCE_EXHAUSTED", "Balance exhausted"


class Notification(models.Model):
    """What we told a user, once: the unique (user, event, key) row is claimed
    before the email goes out, so a retry or a second worker never sends it again.
    `key` names the occurrence (a grant, a funding episode). The dashboard lists these."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="credit_notifications"
    )
    event = models.CharField(max_length=32, choices=NotificationEvent.choices)
    key = models.CharField(max_length=200)
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    subject = models.CharField(max_length=255)
    summary = models.CharField(max_length=500)
    created_at = models.DateTimeField()
    emailed_at = models.DateTimeField(null=True, blank=True)
    # Never retried (at most once): the failure is kept for operators.
    email_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "event", "key"], name="notification_once_per_user_event_key"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="notification_user_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} ({self.key}) for {self.user_id}"


# --- promotions as data ----------------------------------------------------------


class PromotionKind(models.TextChoices):
    FIRST_TOKEN = "FIRST_TOKEN", "First token"
    REFERRAL = "REFERRAL", "Referral"
    TIERED = "TIERED", "Tiered"


class Promotion(models.Model):
    """A promotion's terms. New sign-ups are assigned a live promotion (one variant,
    stickily); `is_active` is the kill switch: off, nobody earns it any more, and
    credit already awarded is left alone."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(
        max_length=16, choices=PromotionKind.choices, default=PromotionKind.FIRST_TOKEN
    )
    is_active = models.BooleanField(
        default=True, help_text="Kill switch: untick to stop new awards at once."
    )
    active_from = models.DateTimeField(help_text="Sign-ups from this moment are assigned to it.")
    active_to = models.DateTimeField(
        null=True, blank=True, help_text="Empty: no end. Sign-ups after it are not assigned."
    )
    # Empty terms follow the PROMOTION_* settings (the default promotion starts so).
    amount_micros = models.BigIntegerField(
        null=True, blank=True, help_text="Micro-dollars awarded. Empty: PROMOTION_AMOUNT_USD."
    )
    window_seconds = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="The first token must come this soon after registering. "
        "Empty: PROMOTION_WINDOW_SECONDS.",
    )
    expiry_days = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="The awarded credit expires after this. Empty: PROMOTION_EXPIRY_DAYS.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when a spend cap (credits.abuse) switched it off; staff are told once.
    paused_reason = models.CharField(max_length=255, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    pause_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-active_from", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micros__isnull=True) | Q(amount_micros__gt=0),
                name="promotion_amount_positive",
            ),
            models.CheckConstraint(
                condition=Q(active_to__isnull=True) | Q(active_to__gt=F("active_from")),
                name="promotion_ends_after_it_starts",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class PromotionVariant(models.Model):
    """An A/B arm of a promotion; empty terms fall back to the promotion's."""

    promotion = models.ForeignKey(Promotion, on_delete=models.PROTECT, related_name="variants")
    name = models.CharField(max_length=50)
    weight = models.PositiveIntegerField(
        default=1,
        help_text="Share of sign-ups: weight / sum of the promotion's weights (0: none now).",
    )
    amount_micros = models.BigIntegerField(null=True, blank=True)
    window_seconds = models.PositiveIntegerField(null=True, blank=True)
    expiry_days = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["promotion_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["promotion", "name"], name="variant_name_unique"),
            models.CheckConstraint(
                condition=Q(amount_micros__isnull=True) | Q(amount_micros__gt=0),
                name="variant_amount_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.promotion.name} / {self.name}"


class PromotionAssignment(models.Model):
    """Which promotion (and variant) a user plays for; written once at sign-up.

    `promotion` is empty when no promotion was running when they signed up."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="promotion_assignment"
    )
    promotion = models.ForeignKey(
        Promotion, null=True, blank=True, on_delete=models.PROTECT, related_name="assignments"
    )
    variant = models.ForeignKey(
        PromotionVariant, null=True, blank=True, on_delete=models.PROTECT,
        related_name="assignments",
    )
    assigned_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.user_id} -> {self.variant or self.promotion or 'no promotion'}"


# --- staff money actions: audit and four-eyes approval ------------------------------


class StaffActionKind(models.TextChoices):
    GRANT = "GRANT", "Grant credit"
    ADJUST = "ADJUST", "Adjust balance"
    REFUND = "REFUND", "Refund"
    VOID = "VOID", "Void rest of grant"
    CHANGE_EXPIRY = "CHANGE_EXPIRY", "Change grant expiry"
    EXPIRE_NOW = "EXPIRE_NOW", "Expire grant now"
    REVOKE_KEYS = "REVOKE_KEYS", "Revoke API keys"


class StaffActionStatus(models.TextChoices):
    PENDING = "PENDING", "Pending approval"
    APPLIED = "APPLIED", "Applied"
    REJECTED = "REJECTED", "Rejected"


class StaffAction(models.Model):
    """The audit record of one staff money action, and its approval request.

    Written by credits.staff_actions only. A row is never deleted; its status
    moves once, from PENDING to APPLIED or REJECTED (or is APPLIED at once when
    no second pair of eyes is needed). The ledger entries it caused carry the
    same actor and reason and the grant's idempotency key `staff-action:<id>`."""

    kind = models.CharField(max_length=16, choices=StaffActionKind.choices)
    status = models.CharField(max_length=16, choices=StaffActionStatus.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_actions"
    )
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.PROTECT, related_name="staff_actions",
        help_text="The grant acted on (void, expiry) or created (grant, refund, positive adjust).",
    )
    amount_micros = models.BigIntegerField(
        null=True, blank=True, help_text="Signed for adjustments."
    )
    grant_kind = models.CharField(max_length=16, choices=GrantKind.choices, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    usage_reference = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=255)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=255, blank=True)
    result = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        permissions = [
            ("grant_credit", "Can grant credit"),
            ("adjust_credit", "Can adjust a balance"),
            ("refund_credit", "Can refund credit"),
            ("void_grant", "Can void the rest of a grant"),
            ("change_grant_expiry", "Can change a grant's expiry or expire it now"),
            ("revoke_api_keys", "Can revoke a user's API keys"),
            ("exceed_support_limit", "Can grant and refund above SUPPORT_GRANT_LIMIT_USD"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="PENDING") | Q(decided_at__isnull=False),
                name="staff_action_decided_has_time",
            ),
        ]
        indexes = [models.Index(fields=["status", "requested_at"], name="staff_action_status_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} for {self.user_id} ({self.status})"


# --- abuse controls of the sign-up credit (credits.abuse) ----------------------------


class DomainRuleAction(models.TextChoices):
    BLOCK = "BLOCK", "Block (refuse sign-ups)"
    ALLOW = "ALLOW", "Allow (overrides the disposable-domains list)"


class EmailDomainRule(models.Model):
    """Staff's own verdict on an email domain; it also covers its subdomains.
    An ALLOW beats the packaged disposable-domains list and any BLOCK."""

    domain = models.CharField(max_length=253, unique=True, help_text="e.g. example.com (lowercase).")
    action = models.CharField(max_length=8, choices=DomainRuleAction.choices)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.domain}"

    def save(self, *args, **kwargs):
        self.domain = self.domain.strip().lower().lstrip("@").rstrip(".")
        super().save(*args, **kwargs)


class SignupRecord(models.Model):
    """One sign-up: where it came from. The velocity limits count these rows, so the
    counters are shared by every process and survive restarts."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="signup_records",
    )
    email_normalized = models.CharField(max_length=254)
    ip = models.GenericIPAddressField(null=True, blank=True)
    network = models.CharField(max_length=64, blank=True, help_text="/24 (IPv4) or /64 (IPv6).")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["ip", "created_at"], name="signup_ip_recent_idx"),
            models.Index(fields=["network", "created_at"], name="signup_network_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"Sign-up of {self.email_normalized} from {self.ip or 'unknown'}"


class PromotionClaim(models.Model):
    """The sign-up credit was given to this normalized email address: at most once,
    ever (unique; kept when the account goes). Written with the grant, in its
    transaction; the spend caps and the per-network limit sum these rows."""

    email_normalized = models.CharField(max_length=254, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    grant = models.ForeignKey(
        CreditGrant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    amount_micros = models.BigIntegerField()
    network = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-claimed_at", "-id"]
        indexes = [models.Index(fields=["network", "claimed_at"], name="claim_network_recent_idx")]

    def __str__(self) -> str:
        return f"Sign-up credit claimed by {self.email_normalized}"


class ReviewStatus(models.TextChoices):
    FLAGGED = "FLAGGED", "Flagged for review"
    CONFIRMED = "CONFIRMED", "Confirmed"
    CLAWED_BACK = "CLAWED_BACK", "Clawed back"


class PromotionReview(models.Model):
    """A sign-up credit that tripped a soft signal (credits.abuse.SOFT_SIGNALS), for staff
    to confirm or claw back. Decided once, through credits.abuse."""

    grant = models.OneToOneField(CreditGrant, on_delete=models.PROTECT, related_name="review")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="promotion_reviews"
    )
    signals = models.CharField(max_length=255, help_text="Comma-separated signal codes.")
    details = models.CharField(max_length=500, blank=True)
    status = models.CharField(max_length=16, choices=ReviewStatus.choices,
                              default=ReviewStatus.FLAGGED)
    created_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=255, blank=True)
    clawed_back_micros = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="review_status_idx")]

    def __str__(self) -> str:
        return f"Review of grant #{self.grant_id} ({self.status})"
