"""Buying credit: open a checkout, credit a paid purchase exactly once, take refunds back.

Credit moves only through credits.services. Provider events (Stripe webhooks and
the test page's answers, which have the same shape) all go through
`receive_event`: it records the event, then handles it in one transaction that
locks the event row, then the purchase row, then (inside credits.services) the
user's row, so duplicate or concurrent deliveries queue and act once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from billing.models import (
    MICROS_PER_CENT,
    CreditPackage,
    EventOutcome,
    PaymentEvent,
    Provider,
    Purchase,
    PurchaseStatus,
)
from billing.providers import Checkout, ProviderError, TestProvider, get_provider, in_test_mode
from billing.signals import purchase_paid
from credits import services as credit_services
from credits.exceptions import GrantNotActive, UnknownUser
from credits.models import GrantKind
from credits.money import display_usd, usd_to_micros

logger = logging.getLogger(__name__)

PAID_EVENTS = {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
FAILED_EVENTS = {"checkout.session.expired", "checkout.session.async_payment_failed"}
REFUND_EVENT = "charge.refunded"
DISPUTE_CREATED_EVENT = "charge.dispute.created"
DISPUTE_CLOSED_EVENT = "charge.dispute.closed"
# Events about a payment: found again by its PaymentIntent.
PAYMENT_EVENTS = {REFUND_EVENT, DISPUTE_CREATED_EVENT, DISPUTE_CLOSED_EVENT}
# A closed dispute that leaves the money with us: "won", or an inquiry closed without a
# chargeback ("warning_closed"; its funds were never withdrawn).
DISPUTE_KEPT_STATUSES = {"won", "warning_closed"}


class PurchaseRefused(Exception):
    """A purchase could not be started or answered; nothing was charged or credited."""


class MalformedEvent(Exception):
    """A verified event lacks what its type promises (recorded, rejected, never retried)."""


@dataclass(frozen=True)
class PurchaseLimits:
    min_micros: int
    max_micros: int

    @property
    def min_display(self) -> str:
        return display_usd(self.min_micros)

    @property
    def max_display(self) -> str:
        return display_usd(self.max_micros)

    @property
    def min_input(self) -> str:  # for <input type=number min=...>
        return display_usd(self.min_micros).lstrip("$").replace(",", "")

    @property
    def max_input(self) -> str:
        return display_usd(self.max_micros).lstrip("$").replace(",", "")


def purchase_limits() -> PurchaseLimits:
    return PurchaseLimits(
        min_micros=usd_to_micros(str(settings.PURCHASE_MIN_USD)),
        max_micros=usd_to_micros(str(settings.PURCHASE_MAX_USD)),
    )


# --- starting a purchase ---------------------------------------------------------


def start_checkout(
    *,
    user: User,
    site_url: str,
    package: CreditPackage | None = None,
    amount_micros: int | None = None,
) -> tuple[Purchase, Checkout]:
    """Create a PENDING purchase for a package or a custom amount and open the
    provider's checkout for it. Credits nothing: only a provider event does.

    Custom amounts must be whole cents within PURCHASE_MIN_USD..PURCHASE_MAX_USD
    (packages are set by staff and exempt). Raises PurchaseRefused.
    """
    if package is not None:
        if not package.is_active:
            raise PurchaseRefused("That package is no longer offered.")
        amount_micros = package.amount_micros
    else:
        limits = purchase_limits()
        if isinstance(amount_micros, bool) or not isinstance(amount_micros, int):
            raise PurchaseRefused("Choose a package or enter an amount.")
        if not limits.min_micros <= amount_micros <= limits.max_micros:
            raise PurchaseRefused(
                f"Enter an amount between {limits.min_display} and {limits.max_display}."
            )
    if amount_micros % MICROS_PER_CENT:
        raise PurchaseRefused("Amounts are charged in whole cents.")

    try:
        provider = get_provider()
    except ProviderError as exc:
        logger.error("Purchase refused: %s", exc)
        raise PurchaseRefused("Buying credit is not available right now.") from exc
    purchase = Purchase.objects.create(
        user=user,
        user_email=user.email,
        package=package,
        provider=provider.name,
        amount_micros=amount_micros,
        idempotency_key=f"purchase:{uuid.uuid4().hex}",
    )
    page = site_url.rstrip("/") + reverse("billing:purchase", args=[purchase.pk])
    try:
        checkout = provider.create_checkout(
            purchase=purchase,
            success_url=page,
            cancel_url=site_url.rstrip("/") + reverse("billing:buy") + "?cancelled=1",
        )
    except ProviderError as exc:
        logger.warning("Checkout for purchase %s failed: %s", purchase.pk, exc)
        _mark_failed(purchase, note="The payment provider could not open a checkout.")
        raise PurchaseRefused(
            "The payment provider is unavailable right now; nothing was charged. Try again."
        ) from exc
    purchase.provider_session_id = checkout.session_id
    purchase.save(update_fields=["provider_session_id"])
    return purchase, checkout


def answer_test_checkout(*, purchase: Purchase, user: User, paid: bool) -> PaymentEvent:
    """The TEST MODE page's Confirm/Decline: sends the same event a webhook would.

    Refused unless the test provider is the active one and the purchase is the
    user's own, still pending, test purchase.
    """
    if purchase.provider != Provider.TEST or not in_test_mode():
        raise PurchaseRefused("Test payments are switched off.")
    if purchase.user_id != user.pk:
        raise PurchaseRefused("This is not your purchase.")
    if purchase.status != PurchaseStatus.PENDING:
        raise PurchaseRefused(f"This purchase is already {purchase.get_status_display().lower()}.")
    return receive_event(provider=Provider.TEST, event=TestProvider.event(purchase=purchase, paid=paid))


def refund_test_purchase(*, purchase: Purchase) -> PaymentEvent:
    """Refund a paid TEST MODE purchase in full, through the same event path as a
    Stripe refund (for staff trying refunds without Stripe). Raises PurchaseRefused."""
    if purchase.provider != Provider.TEST or purchase.status != PurchaseStatus.FULFILLED:
        raise PurchaseRefused("Only paid test-mode purchases can be refunded here.")
    return receive_event(
        provider=Provider.TEST,
        event=TestProvider.refund_event(
            purchase=purchase, refunded_total_micros=purchase.amount_micros
        ),
    )


# --- provider events ----------------------------------------------------------------


def receive_event(*, provider: str, event: dict[str, Any]) -> PaymentEvent:
    """Record a verified provider event, then act on it once.

    A replay (same event id) is counted and returns the recorded outcome. If
    handling raises, nothing of it is written (the event stays unprocessed, with
    the error noted) and the exception propagates so the provider retries.
    """
    record = _record_event(provider=provider, event=event)
    if record.processed_at is not None:
        return record
    try:
        with transaction.atomic():
            locked = PaymentEvent.objects.select_for_update().get(pk=record.pk)
            if locked.processed_at is not None:
                return locked  # a concurrent delivery handled it while we waited
            try:
                outcome, note, purchase = _dispatch(provider, locked.event_type, event)
            except MalformedEvent as exc:
                outcome, note, purchase = EventOutcome.REJECTED, str(exc), None
            locked.outcome, locked.note = outcome, note[:255]
            locked.purchase = purchase or locked.purchase
            locked.processed_at = timezone.now()
            locked.last_error = ""
            locked.save(update_fields=["outcome", "note", "purchase", "processed_at", "last_error"])
    except Exception as exc:
        PaymentEvent.objects.filter(pk=record.pk).update(last_error=repr(exc)[:2000])
        raise
    if outcome == EventOutcome.REJECTED:
        logger.warning("Rejected %s event %s: %s", provider, locked.event_id, note)
    return locked


def _record_event(*, provider: str, event: dict[str, Any]) -> PaymentEvent:
    event_id, event_type = str(event["id"]), str(event["type"])
    obj = _event_object(event, required=False)
    reference = obj.get("payment_intent") if event_type in PAYMENT_EVENTS else obj.get("id")
    try:
        with transaction.atomic():
            return PaymentEvent.objects.create(
                provider=provider,
                event_id=event_id[:255],
                event_type=event_type[:100],
                payload=event,
                object_reference=str(reference or "")[:255],
            )
    except IntegrityError:
        # A replay, or a concurrent duplicate delivery that inserted first.
        PaymentEvent.objects.filter(provider=provider, event_id=event_id).update(
            deliveries=F("deliveries") + 1
        )
        return PaymentEvent.objects.get(provider=provider, event_id=event_id)


def _event_object(event: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if isinstance(obj, dict):
        return obj
    if required:
        raise MalformedEvent("The event carries no data.object.")
    return {}


def _dispatch(
    provider: str, event_type: str, event: dict[str, Any]
) -> tuple[str, str, Purchase | None]:
    if event_type in PAID_EVENTS:
        return _on_session_paid(provider, _event_object(event))
    if event_type in FAILED_EVENTS:
        return _on_session_failed(provider, event_type, _event_object(event))
    if event_type == REFUND_EVENT:
        return _on_charge_refunded(provider, _event_object(event))
    if event_type == DISPUTE_CREATED_EVENT:
        return _on_dispute_created(provider, _event_object(event))
    if event_type == DISPUTE_CLOSED_EVENT:
        return _on_dispute_closed(provider, _event_object(event))
    return EventOutcome.IGNORED, "Not an event TokenBank acts on.", None


def _cents(obj: dict[str, Any], field: str) -> int:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(f"{field} is not a whole number of cents: {value!r}.")
    return value


def _purchase_for_session(provider: str, session: dict[str, Any]) -> Purchase | None:
    """The session's purchase, locked: by our reference on it, else by the session id."""
    candidates = Purchase.objects.select_for_update().filter(provider=provider)
    for raw in (session.get("client_reference_id"), (session.get("metadata") or {}).get("purchase_id")):
        try:
            purchase_id = uuid.UUID(str(raw))
        except ValueError:
            continue
        purchase = candidates.filter(pk=purchase_id).first()
        if purchase is not None:
            return purchase
    session_id = session.get("id")
    return candidates.filter(provider_session_id=session_id).first() if session_id else None


def _on_session_paid(provider: str, session: dict[str, Any]) -> tuple[str, str, Purchase | None]:
    purchase = _purchase_for_session(provider, session)
    if purchase is None:
        return EventOutcome.IGNORED, "No purchase matches this checkout session.", None
    if session.get("payment_status") != "paid":
        return (
            EventOutcome.IGNORED,
            f"Awaiting payment (payment_status={session.get('payment_status')!r}).",
            purchase,
        )
    session_id = str(session.get("id") or "")
    if not session_id:
        raise MalformedEvent("The checkout session has no id.")
    return fulfil_purchase(
        purchase=purchase,
        session_id=session_id,
        amount_paid_micros=_cents(session, "amount_total") * MICROS_PER_CENT,
        currency=str(session.get("currency") or ""),
        payment_id=str(session.get("payment_intent") or ""),
        payment_fingerprint=payment_fingerprint(session),
    )


def payment_fingerprint(session: dict[str, Any]) -> str:
    """The payment method's fingerprint, when the event carries it (Stripe: the card's
    `fingerprint` in payment_method_details, or our metadata); "" otherwise."""
    details = session.get("payment_method_details")
    card = details.get("card") if isinstance(details, dict) else None
    value = card.get("fingerprint") if isinstance(card, dict) else None
    value = value or (session.get("metadata") or {}).get("payment_fingerprint")
    return str(value or "")[:128]


def fulfil_purchase(
    *,
    purchase: Purchase | uuid.UUID,
    session_id: str,
    amount_paid_micros: int,
    currency: str,
    payment_id: str = "",
    payment_fingerprint: str = "",
) -> tuple[str, str, Purchase]:
    """Credit a paid purchase with a PURCHASED grant (no expiry), exactly once.

    Locks the purchase row, so concurrent deliveries queue; the grant's
    idempotency key "<provider>:<session id>" is unique per user in the database
    as a second guard. A payment that does not match the purchase (amount,
    currency, session) or whose user is gone is not credited: the purchase goes
    to REVIEW for staff. Refunds that arrived before the payment are applied
    right after. Returns (outcome, note, purchase).
    """
    purchase_id = purchase.pk if isinstance(purchase, Purchase) else purchase
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase_id)
        if locked.status == PurchaseStatus.FULFILLED:
            return EventOutcome.IGNORED, "Already credited.", locked
        if locked.status == PurchaseStatus.REVIEW:
            return EventOutcome.IGNORED, "Held for staff review; not credited.", locked
        problem = ""
        if locked.provider_session_id and locked.provider_session_id != session_id:
            problem = f"Paid through session {session_id}, not the purchase's own session."
        elif currency.lower() != locked.currency or amount_paid_micros != locked.amount_micros:
            problem = (
                f"Paid {display_usd(amount_paid_micros)} {currency.upper()} for a "
                f"{locked.amount_display} purchase."
            )
        elif locked.user_id is None:
            problem = "The user was deleted before the payment completed."
        grant = None
        if not problem:
            try:
                grant = credit_services.add_credit(
                    user=locked.user_id,
                    amount_micros=locked.amount_micros,
                    kind=GrantKind.PURCHASED,
                    expires_at=None,
                    description=f"Purchased {locked.amount_display}"
                    + (" (test mode)" if locked.is_test else ""),
                    idempotency_key=f"{locked.provider}:{session_id}",
                    source_reference=f"purchase:{locked.pk}",
                )
            except UnknownUser:
                problem = "The user was deleted before the payment completed."
        if problem:
            locked.status = PurchaseStatus.REVIEW
            locked.status_note = f"{problem} Not credited: refund it at the provider."[:255]
            locked.provider_payment_id = payment_id or locked.provider_payment_id
            locked.save(update_fields=["status", "status_note", "provider_payment_id"])
            logger.warning("Purchase %s needs review: %s", locked.pk, problem)
            return EventOutcome.REJECTED, problem, locked
        locked.grant = grant
        locked.status = PurchaseStatus.FULFILLED
        locked.status_note = ""
        locked.fulfilled_at = timezone.now()
        locked.provider_session_id = session_id
        locked.provider_payment_id = payment_id or locked.provider_payment_id
        locked.save(
            update_fields=[
                "grant", "status", "status_note", "fulfilled_at",
                "provider_session_id", "provider_payment_id",
            ]
        )
        _apply_deferred_refunds(locked)
        purchase_paid.send(sender=Purchase, user_id=locked.user_id, purchase_id=str(locked.pk),
                           amount_micros=locked.amount_micros,
                           payment_fingerprint=payment_fingerprint, paid_at=locked.fulfilled_at)
        return EventOutcome.PROCESSED, f"Credited {locked.amount_display}.", locked


def _on_session_failed(
    provider: str, event_type: str, session: dict[str, Any]
) -> tuple[str, str, Purchase | None]:
    purchase = _purchase_for_session(provider, session)
    if purchase is None:
        return EventOutcome.IGNORED, "No purchase matches this checkout session.", None
    if purchase.status != PurchaseStatus.PENDING:
        return EventOutcome.IGNORED, f"Purchase already {purchase.status}.", purchase
    if event_type == "checkout.session.expired":
        note = "The checkout expired unpaid."
    elif purchase.is_test:
        note = "Declined on the test payment page."
    else:
        note = "The payment failed."
    _mark_failed(purchase, note=note)
    return EventOutcome.PROCESSED, note, purchase


def _mark_failed(purchase: Purchase, *, note: str) -> None:
    purchase.status = PurchaseStatus.FAILED
    purchase.status_note = note
    purchase.failed_at = timezone.now()
    purchase.save(update_fields=["status", "status_note", "failed_at"])


# --- refunds ----------------------------------------------------------------------


def _purchase_for_payment(provider: str, obj: dict[str, Any]) -> Purchase | None:
    """The purchase a charge or dispute is about, locked: by its PaymentIntent, else by our
    reference in its metadata."""
    payment_id = str(obj.get("payment_intent") or "")
    purchases = Purchase.objects.select_for_update().filter(provider=provider)
    purchase = purchases.filter(provider_payment_id=payment_id).first() if payment_id else None
    if purchase is None:
        try:
            purchase_id = uuid.UUID(str((obj.get("metadata") or {}).get("purchase_id")))
        except ValueError:
            purchase_id = None
        purchase = purchases.filter(pk=purchase_id).first() if purchase_id else None
    return purchase


def _on_charge_refunded(provider: str, charge: dict[str, Any]) -> tuple[str, str, Purchase | None]:
    refunded_micros = _cents(charge, "amount_refunded") * MICROS_PER_CENT
    payment_id = str(charge.get("payment_intent") or "")
    purchase = _purchase_for_payment(provider, charge)
    if purchase is None or purchase.status in (PurchaseStatus.PENDING, PurchaseStatus.FAILED):
        # Refund before completion: kept, and applied when the payment is credited.
        return EventOutcome.DEFERRED, "Refund for a payment not credited yet.", purchase
    return apply_refund(
        purchase=purchase,
        refunded_total_micros=refunded_micros,
        reference=str(charge.get("id") or payment_id),
    )


def apply_refund(
    *, purchase: Purchase | uuid.UUID, refunded_total_micros: int, reference: str = ""
) -> tuple[str, str, Purchase]:
    """Take back what the provider refunded, from the purchase's own grant only.

    `refunded_total_micros` is the payment's cumulative refunded amount (as
    Stripe reports it), so replays and out-of-date events take nothing more.
    Never takes the balance below zero: credit calls in flight hold is taken back
    when they finish (pending), what was already spent is the shortfall; the
    take-back (credits.TakeBack, see `billing.purchases.refund_progress`) records
    both for staff. Idempotent.
    """
    purchase_id = purchase.pk if isinstance(purchase, Purchase) else purchase
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase_id)
        total = min(refunded_total_micros, locked.amount_micros)
        delta = total - locked.refunded_micros
        if delta <= 0:
            return EventOutcome.IGNORED, "Refund already taken into account.", locked
        result = None
        if locked.grant_id is not None:
            result = credit_services.take_back_credit(
                grant=locked.grant_id,
                amount_micros=delta,
                reason=f"Refund of {display_usd(delta)} of a {locked.amount_display} purchase"
                + (f" ({reference})" if reference else ""),
                idempotency_key=f"refund:{locked.pk}:{total}",
                source_reference=locked.take_back_reference,
            )
        locked.refunded_micros = total
        locked.save(update_fields=["refunded_micros"])
    note = f"Refunded {display_usd(delta)}"
    if result is None:
        note += "; nothing had been credited"
    else:
        note += _take_back_note(result)
        if result.shortfall_micros:
            logger.warning("Refund shortfall of %s micros on purchase %s",
                           result.shortfall_micros, locked.pk)
    return EventOutcome.PROCESSED, note + ".", locked


def _take_back_note(result: credit_services.TakeBackResult) -> str:
    note = ""
    if result.pending_micros:
        note += (f"; {display_usd(result.taken_micros)} taken back now, "
                 f"{display_usd(result.pending_micros)} held by calls in flight is taken back "
                 "when they finish")
    if result.shortfall_micros:
        note += (f"; {display_usd(result.shortfall_micros)} was already spent and could not "
                 "be taken back")
    return note


def _apply_deferred_refunds(purchase: Purchase) -> None:
    """Refund events that arrived before the payment was credited."""
    refs = Q(purchase=purchase)
    if purchase.provider_payment_id:
        refs |= Q(object_reference=purchase.provider_payment_id)
    deferred = list(
        PaymentEvent.objects.filter(
            refs, provider=purchase.provider, event_type=REFUND_EVENT, outcome=EventOutcome.DEFERRED
        )
    )
    if not deferred:
        return
    refunded_cents = max(
        _event_object(e.payload, required=False).get("amount_refunded") or 0 for e in deferred
    )
    _, note, _ = apply_refund(
        purchase=purchase, refunded_total_micros=int(refunded_cents) * MICROS_PER_CENT
    )
    PaymentEvent.objects.filter(pk__in=[e.pk for e in deferred]).update(
        outcome=EventOutcome.PROCESSED,
        purchase=purchase,
        note=f"Applied once the payment was credited: {note}"[:255],
    )


# --- disputes -------------------------------------------------------------------------


def _dispute_key(dispute_id: str) -> str:
    return f"dispute:{dispute_id}"


def _on_dispute_created(provider: str, dispute: dict[str, Any]) -> tuple[str, str, Purchase | None]:
    """A chargeback: the disputed amount is taken back like a refund while it is open."""
    dispute_id = str(dispute.get("id") or "")
    if not dispute_id:
        raise MalformedEvent("The dispute has no id.")
    amount = _cents(dispute, "amount") * MICROS_PER_CENT
    purchase = _purchase_for_payment(provider, dispute)
    if purchase is None or purchase.grant_id is None:
        return (EventOutcome.REVIEW,
                f"Dispute {dispute_id} of {display_usd(amount)} for a payment that credited "
                "nothing we know: staff review.", purchase)
    if amount == 0:
        return EventOutcome.IGNORED, f"Dispute {dispute_id} is of $0.00.", purchase
    result = credit_services.take_back_credit(
        grant=purchase.grant_id,
        amount_micros=amount,
        reason=f"Dispute {dispute_id} of {display_usd(amount)} of a "
        f"{purchase.amount_display} purchase",
        idempotency_key=_dispute_key(dispute_id),
        source_reference=purchase.take_back_reference,
    )
    if result.shortfall_micros:
        logger.warning("Dispute shortfall of %s micros on purchase %s",
                       result.shortfall_micros, purchase.pk)
    return (EventOutcome.PROCESSED,
            f"Dispute {dispute_id}: {display_usd(amount)} taken back" + _take_back_note(result)
            + ".", purchase)


def _on_dispute_closed(provider: str, dispute: dict[str, Any]) -> tuple[str, str, Purchase | None]:
    """Won (or an inquiry closed): the credit the dispute took back is given back (a new
    grant; what is still pending is withdrawn). Lost: the take-back stands."""
    dispute_id = str(dispute.get("id") or "")
    if not dispute_id:
        raise MalformedEvent("The dispute has no id.")
    status = str(dispute.get("status") or "")
    purchase = _purchase_for_payment(provider, dispute)
    if purchase is None or purchase.user_id is None:
        return (EventOutcome.REVIEW,
                f"Dispute {dispute_id} closed ({status}) for a payment we cannot match: "
                "staff review.", purchase)
    if status not in DISPUTE_KEPT_STATUSES:
        return (EventOutcome.PROCESSED,
                f"Dispute {dispute_id} closed ({status}): the credit stays taken back.", purchase)
    try:
        reversal = credit_services.reverse_take_back(
            user=purchase.user_id,
            idempotency_key=_dispute_key(dispute_id),
            reason=f"Dispute {dispute_id} closed in our favour ({status}): credit given back",
        )
    except GrantNotActive:
        return (EventOutcome.IGNORED,
                f"Dispute {dispute_id} closed ({status}); nothing had been taken back.", purchase)
    given = reversal.grant.amount_micros if reversal.grant is not None else 0
    note = f"Dispute {dispute_id} closed ({status}): {display_usd(given)} given back"
    if reversal.cancelled_micros:
        note += f"; {display_usd(reversal.cancelled_micros)} no longer owed by calls in flight"
    return EventOutcome.PROCESSED, note + ".", purchase
