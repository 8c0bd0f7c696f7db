"""The ledger: credit grants (lots), their append-only entries, and holds of calls in flight."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class CreditAccount(models.Model):
    """Whose credit: the cached totals of one account's ledger, written only by the ledger
    services (credits.services.writer) in the transaction that writes the entries, and
    checked by `credits_verify`. Its row is the ledger's lock (credits.services.locks).

    One account per user today (created with the user, or by the first ledger service that
    needs it); the cached totals live here, not on the user, so no save of a user, however
    stale, can overwrite them. An organization's shared account would be another owner of
    this row.
    """

    # CASCADE: an account with any history cannot be left behind anyway (its grants and
    # entries PROTECT the user); an empty one goes with its user.
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="credit_account")
    balance_micros = models.BigIntegerField(default=0, help_text="Micro-dollars (cached).")
    held_micros = models.BigIntegerField(default=0, help_text="Micro-dollars held (cached).")
    # Set with the account's first grant whose expiry is "extended while active": until
    # then a paid call looks for none (credits.services.grants.paid_call).
    has_extending_grants = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance_micros__gte=0),
                                   name="account_balance_not_negative"),
            models.CheckConstraint(
                condition=Q(held_micros__gte=0) & Q(held_micros__lte=F("balance_micros")),
                name="account_held_within_balance",
            ),
        ]

    def __str__(self) -> str:
        return f"credit account of user {self.user_id}"


class GrantKind(models.TextChoices):
    PROMOTIONAL = "PROMOTIONAL", "Promotional"
    PURCHASED = "PURCHASED", "Purchased"
    REFUND = "REFUND", "Refund"
    ADJUSTMENT = "ADJUSTMENT", "Adjustment"
    REFERRAL = "REFERRAL", "Referral"


class CreditGrantQuerySet(models.QuerySet):
    def extending(self) -> "CreditGrantQuerySet":
        """Grants whose expiry each paid call pushes ("extended while active"); their
        accounts are marked `has_extending_grants`."""
        return self.filter(extend_days__isnull=False)


class CreditGrant(models.Model):
    """A lot of credit. `remaining_micros` and `held_micros` move only through
    credits.services, each move mirrored by a LedgerEntry on this grant.

    `pending_take_back_micros` is the part of the held credit owed to take-backs (refunds)
    that met it: taken back (REFUND) as the holds release it, never freed. It is the sum of
    the grant's open TakeBack rows' pending part (checked by credits_verify)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="credit_grants"
    )
    kind = models.CharField(max_length=16, choices=GrantKind.choices)
    amount_micros = models.BigIntegerField()
    remaining_micros = models.BigIntegerField()
    held_micros = models.BigIntegerField(default=0)
    pending_take_back_micros = models.BigIntegerField(default=0)
    granted_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    voided_at = models.DateTimeField(null=True, blank=True)
    # What the customer reads (a staff member's customer note, or the kind's default).
    description = models.CharField(max_length=255, blank=True)
    # Staff only: why a staff member did this (never shown to the customer).
    internal_reason = models.CharField(max_length=255, blank=True, default="")
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
    # the balance but not spendable until the user verifies their email (credits.promotion.verification).
    awaiting_verification = models.BooleanField(default=False)
    # "Extended while active" (a promotion's expiry policy): each paid call moves
    # `expires_at` to `extend_days` after it, never past `expiry_cap_at`
    # (credits.services.grants.extend_active_grants). Empty: a fixed expiry.
    extend_days = models.PositiveIntegerField(null=True, blank=True)
    expiry_cap_at = models.DateTimeField(null=True, blank=True)

    objects = CreditGrantQuerySet.as_manager()

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
            # Owed credit is held credit: it can never be free (spendable) in between.
            models.CheckConstraint(
                condition=Q(pending_take_back_micros__gte=0)
                & Q(pending_take_back_micros__lte=F("held_micros")),
                name="grant_pending_take_back_within_held",
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

    @property
    def customer_description(self) -> str:
        """The grant's note as the customer may read it (see `customer_text`)."""
        return customer_text(self.description, actor_id=self.actor_id,
                             internal_reason=self.internal_reason,
                             fallback=staff_grant_default(self.kind))

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
    # The take-back (refund) a REFUND entry pays towards; empty on entries before take-backs
    # were recorded.
    take_back = models.ForeignKey(
        "TakeBack", null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    # Signed change to the balance, and to the held amount (holds move only the latter).
    amount_micros = models.BigIntegerField()
    held_change_micros = models.BigIntegerField(default=0)
    balance_after_micros = models.BigIntegerField()
    # What the customer reads (for a staff action: its customer note, or the kind's default).
    description = models.CharField(max_length=255, blank=True)
    # Staff only: why a staff member did this (never shown to the customer).
    internal_reason = models.CharField(max_length=255, blank=True, default="")
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

    @property
    def customer_description(self) -> str:
        """The line as the customer may read it (see `customer_text`)."""
        return customer_text(self.description, actor_id=self.actor_id,
                             internal_reason=self.internal_reason,
                             fallback=staff_entry_default(self.entry_type, self.amount_micros))


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
    # What the caller says the work is (a metered call: its model, endpoint, prices), for
    # whoever records it after the stale-hold sweep settled it; the ledger never reads it.
    metadata = models.JSONField(default=dict, blank=True)
    # The journal of the call in flight (credits.services.record_progress): tokens produced
    # so far and what the part delivered to the client is worth at the call's price. The
    # sweep settles only holds whose journal went silent, for what it says was delivered.
    delivered_tokens = models.PositiveIntegerField(default=0)
    delivered_micros = models.BigIntegerField(default=0)
    journal_at = models.DateTimeField(null=True, blank=True)
    # Settled by the stale-hold sweep (not by its call): the call left no usage record.
    swept = models.BooleanField(default=False)

    # Not a column: the account's balance as the transaction that made this hold left it
    # (authorize() sets it; None on a hold read from the database). A stream shows it in its
    # headers without reading the account again.
    balance_after_micros: int | None = None

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
            models.CheckConstraint(condition=Q(delivered_micros__gte=0),
                                   name="hold_delivered_not_negative"),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"], name="hold_status_created_idx"),
            # The sweep's callers look up recently swept holds every minute (a few rows).
            models.Index(fields=["settled_at"], condition=Q(swept=True), name="hold_swept_idx"),
        ]

    def __str__(self) -> str:
        return f"Hold {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status == HoldStatus.ACTIVE


class TakeBack(models.Model):
    """One request to take credit back from a grant (a payment refund, a dispute, a clawback),
    and how far it got: `taken` (REFUND entries linked to it), `pending` (met credit held by
    calls in flight: taken as their holds release it) and `shortfall` (already spent: never
    taken). The numbers only move from pending to taken or shortfall, through credits.services,
    under the account's lock; `completed_at` is set when nothing is pending any more.
    `cancelled` is pending the requester withdrew (a dispute won before its holds settled).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="take_backs"
    )
    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="take_backs")
    requested_micros = models.BigIntegerField()
    taken_micros = models.BigIntegerField(default=0)
    pending_micros = models.BigIntegerField(default=0)
    shortfall_micros = models.BigIntegerField(default=0)
    cancelled_micros = models.BigIntegerField(default=0)
    reason = models.CharField(max_length=255)
    # Who asked, e.g. "purchase:<id>" for a payment refund (billing reads its take-backs so).
    source_reference = models.CharField(max_length=200, blank=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
        related_name="+",
    )
    idempotency_key = models.CharField(max_length=200)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"], name="take_back_idempotency_key_unique_per_user"
            ),
            models.CheckConstraint(condition=Q(requested_micros__gt=0),
                                   name="take_back_requested_positive"),
            models.CheckConstraint(
                condition=Q(taken_micros__gte=0) & Q(pending_micros__gte=0)
                & Q(shortfall_micros__gte=0) & Q(cancelled_micros__gte=0)
                & Q(requested_micros=F("taken_micros") + F("pending_micros")
                    + F("shortfall_micros") + F("cancelled_micros")),
                name="take_back_parts_add_up",
            ),
            models.CheckConstraint(
                condition=(Q(pending_micros=0) & Q(completed_at__isnull=False))
                | (Q(pending_micros__gt=0) & Q(completed_at__isnull=True)),
                name="take_back_complete_when_nothing_pending",
            ),
        ]
        indexes = [
            models.Index(fields=["grant", "completed_at"], name="take_back_open_idx"),
        ]

    def __str__(self) -> str:
        state = "complete" if self.is_complete else "pending"
        return f"Take-back #{self.pk} of grant #{self.grant_id} ({state})"

    @property
    def is_complete(self) -> bool:
        return self.pending_micros == 0


# --- what customers read of a staff member's rows ---------------------------------------

# The note a customer reads when a staff member wrote none (per grant kind / entry).
STAFF_GRANT_DEFAULTS = {
    GrantKind.ADJUSTMENT: "Credit from TokenBank support",
    GrantKind.PROMOTIONAL: "Promotional credit from TokenBank",
    GrantKind.PURCHASED: "Credit from TokenBank support",
    GrantKind.REFERRAL: "Referral credit from TokenBank",
    GrantKind.REFUND: "Refund from TokenBank support",
}
STAFF_ENTRY_DEFAULTS = {
    EntryType.REFUND: "Refund from TokenBank support",
    EntryType.VOID: "Credit removed by TokenBank support",
    EntryType.ADJUSTMENT: "Balance correction by TokenBank support",
    EntryType.EXPIRY_CHANGE: "Expiry date changed by TokenBank support",
    EntryType.EXPIRY: "Credit expired",
}
STAFF_DEFAULT = "Change by TokenBank support"


def staff_grant_default(kind: str) -> str:
    return STAFF_GRANT_DEFAULTS.get(kind, STAFF_DEFAULT)


def staff_entry_default(entry_type: str, amount_micros: int) -> str:
    if entry_type == EntryType.GRANT:
        return STAFF_GRANT_DEFAULTS[GrantKind.ADJUSTMENT]
    if entry_type == EntryType.REFUND and amount_micros < 0:
        return "Credit taken back by TokenBank support"
    return STAFF_ENTRY_DEFAULTS.get(entry_type, STAFF_DEFAULT)


def customer_text(description: str, *, actor_id: int | None, internal_reason: str,
                  fallback: str) -> str:
    """What a customer may read of a grant's or an entry's description.

    Since internal reasons were split from customer notes, a staff member's row carries its
    internal reason apart (`internal_reason`) and `description` is the customer note. Rows a
    staff member wrote before (an actor, no internal reason) may hold an internal reason in
    `description`; they are history and never rewritten, so the customer reads the kind's
    default instead. Rows written by the system (no actor) read as written."""
    if actor_id is None or internal_reason:
        return description
    return fallback
