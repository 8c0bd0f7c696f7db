"""Staff money actions (the admin's door into the ledger), with audit and four-eyes.

Every action is recorded as a `StaffAction` row (who, why, when, on whom, what
came of it) in the same transaction as the ledger entries it causes, which go
through credits.services and carry the same actor and reason. Grants, refunds
and adjustments above ADMIN_APPROVAL_THRESHOLD_USD are created PENDING: they
are checked now (a dry run, rolled back) and take effect only when a second,
different staff member holding the same permission approves them. Applying
uses the idempotency key `staff-action:<id>`, so an action can credit once only.

Refusals raise a credits.exceptions error (ActionNotAllowed for permissions and
approval rules) with nothing written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import ApiKey, User
from accounts.services import revoke_api_key
from credits import money, services
from credits.exceptions import CreditError, GrantNotActive, InvalidAmount
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    StaffAction,
    StaffActionKind,
    StaffActionStatus,
)
from credits.selectors import call_charge


class ActionNotAllowed(CreditError):
    """The staff member may not do this (permission, limit, or four-eyes rule)."""

    code = "action_not_allowed"


class BulkActionFailed(CreditError):
    """One user of a bulk action was refused; nothing was written for any of them."""

    code = "bulk_action_failed"


PERMISSIONS = {
    StaffActionKind.GRANT: "credits.grant_credit",
    StaffActionKind.ADJUST: "credits.adjust_credit",
    StaffActionKind.REFUND: "credits.refund_credit",
    StaffActionKind.VOID: "credits.void_grant",
    StaffActionKind.CHANGE_EXPIRY: "credits.change_grant_expiry",
    StaffActionKind.EXPIRE_NOW: "credits.change_grant_expiry",
    StaffActionKind.REVOKE_KEYS: "credits.revoke_api_keys",
}
UNLIMITED_PERMISSION = "credits.exceed_support_limit"
# Kinds whose amount counts against the support limit and the approval threshold.
LIMITED_KINDS = {StaffActionKind.GRANT, StaffActionKind.REFUND, StaffActionKind.ADJUST}
STAFF_GRANT_KINDS = [GrantKind.ADJUSTMENT, GrantKind.PROMOTIONAL, GrantKind.PURCHASED,
                     GrantKind.REFERRAL]


def approval_threshold_micros() -> int:
    return money.usd_to_micros(str(settings.ADMIN_APPROVAL_THRESHOLD_USD))


def support_limit_micros() -> int:
    return money.usd_to_micros(str(settings.SUPPORT_GRANT_LIMIT_USD))


def can_perform(staff: User, kind: str, amount_micros: int | None = None) -> bool:
    try:
        _check_allowed(staff, kind, amount_micros)
    except ActionNotAllowed:
        return False
    return True


def can_review(staff: User) -> bool:
    """May see the approve / reject pages (the rules are checked per action)."""
    return staff.is_active and staff.is_staff and any(
        staff.has_perm(p) for p in set(PERMISSIONS.values()))


def _check_allowed(staff: User, kind: str, amount_micros: int | None) -> None:
    label = StaffActionKind(kind).label.lower()
    if not (staff.is_active and staff.is_staff and staff.has_perm(PERMISSIONS[kind])):
        raise ActionNotAllowed(f"You do not have permission to {label}.")
    if (
        kind in LIMITED_KINDS
        and amount_micros is not None
        and abs(amount_micros) > support_limit_micros()
        and not staff.has_perm(UNLIMITED_PERMISSION)
    ):
        raise ActionNotAllowed(
            f"You may {label} up to {money.display_usd(support_limit_micros())}; "
            "ask Finance for more."
        )


def _needs_approval(kind: str, amount_micros: int | None) -> bool:
    return (
        kind in LIMITED_KINDS
        and amount_micros is not None
        and abs(amount_micros) > approval_threshold_micros()
    )


# --- the actions -------------------------------------------------------------------


def grant_credit(*, staff: User, user: User, amount_micros: int, reason: str,
                 kind: str = GrantKind.ADJUSTMENT, expires_at: dt.datetime | None = None,
                 now: dt.datetime | None = None) -> StaffAction:
    """Grant credit of `kind` (expiry optional: default per kind)."""
    _require_positive(amount_micros)
    if kind not in GrantKind.values or kind == GrantKind.REFUND:
        raise InvalidAmount(f"Staff cannot grant credit of kind {kind!r}; refunds are separate.")
    return _submit(StaffAction(kind=StaffActionKind.GRANT, user=user, amount_micros=amount_micros,
                               grant_kind=kind, expires_at=expires_at, reason=reason),
                   staff=staff, now=now)


def adjust_balance(*, staff: User, user: User, amount_micros: int, reason: str,
                   now: dt.datetime | None = None) -> StaffAction:
    """Add (positive) or take away (negative, never below zero) credit."""
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) or not amount_micros:
        raise InvalidAmount("An adjustment is a non-zero amount.")
    return _submit(StaffAction(kind=StaffActionKind.ADJUST, user=user,
                               amount_micros=amount_micros, reason=reason),
                   staff=staff, now=now)


def refund_credit(*, staff: User, user: User, amount_micros: int, reason: str,
                  usage_reference: str = "", now: dt.datetime | None = None) -> StaffAction:
    """Give credit back as a REFUND grant, optionally naming the call (its request id),
    which must be one this user was charged for in the ledger."""
    _require_positive(amount_micros)
    usage_reference = (usage_reference or "").strip()
    if usage_reference:
        charge = call_charge(request_id=usage_reference)
        if charge is None or charge.user_id != user.pk:
            raise InvalidAmount(f"{user} has no usage record with request id {usage_reference!r}.")
    return _submit(StaffAction(kind=StaffActionKind.REFUND, user=user,
                               amount_micros=amount_micros, grant_kind=GrantKind.REFUND,
                               usage_reference=usage_reference, reason=reason),
                   staff=staff, now=now)


def void_rest_of_grant(*, staff: User, grant: CreditGrant, reason: str,
                       now: dt.datetime | None = None) -> StaffAction:
    """Void what is left of one grant (credit held by a call is voided when it settles).
    Raises GrantNotActive for a voided grant; audited, permission-checked like every action."""
    if grant.voided_at is not None:
        raise GrantNotActive(f"Grant #{grant.pk} was already voided.")
    return _submit(StaffAction(kind=StaffActionKind.VOID, user_id=grant.user_id, grant=grant,
                               reason=reason), staff=staff, now=now)


def change_expiry(*, staff: User, grant: CreditGrant, expires_at: dt.datetime | None,
                  reason: str, now: dt.datetime | None = None) -> StaffAction:
    """Move a grant's expiry (None: never). A past expiry is refused: use expire_now."""
    if expires_at is not None and expires_at <= (now or timezone.now()):
        raise InvalidAmount("The new expiry must be in the future (or use 'expire now').")
    return _submit(StaffAction(kind=StaffActionKind.CHANGE_EXPIRY, user_id=grant.user_id,
                               grant=grant, expires_at=expires_at, reason=reason),
                   staff=staff, now=now)


def expire_now(*, staff: User, grant: CreditGrant, reason: str,
               now: dt.datetime | None = None) -> StaffAction:
    """Expire a grant's unheld remainder at once (an EXPIRY entry); audited."""
    return _submit(StaffAction(kind=StaffActionKind.EXPIRE_NOW, user_id=grant.user_id,
                               grant=grant, reason=reason), staff=staff, now=now)


def revoke_api_keys(*, staff: User, user: User, reason: str,
                    now: dt.datetime | None = None) -> StaffAction:
    """Revoke every active API key of the user at once (no money moves); audited."""
    return _submit(StaffAction(kind=StaffActionKind.REVOKE_KEYS, user=user, reason=reason),
                   staff=staff, now=now)


def on_open_grants(*, staff: User, user: User, do: Callable[..., StaffAction],
                   grant_kind: str = "", now: dt.datetime | None = None,
                   **kwargs) -> list[StaffAction]:
    """A grant action (void, change expiry, expire now) on each of the user's grants
    that still has credit (of one kind, if given): one StaffAction per grant."""
    now = now or timezone.now()
    grants = (CreditGrant.objects.filter(user=user, remaining_micros__gt=0, voided_at__isnull=True)
              .exclude(expires_at__lte=now).order_by("id"))
    if grant_kind:
        grants = grants.filter(kind=grant_kind)
    grants = list(grants)
    if not grants:
        what = GrantKind(grant_kind).label.lower() + " " if grant_kind else ""
        raise GrantNotActive(f"{user} has no {what}credit left to act on.")
    return [do(staff=staff, grant=grant, now=now, **kwargs) for grant in grants]


def for_each(items: Iterable, do: Callable[..., StaffAction | list[StaffAction]], *,
             target: str = "user", **kwargs) -> list[StaffAction]:
    """A bulk action: `do(**{target: item}, **kwargs)` for every item, all or nothing."""
    done: list[StaffAction] = []
    with transaction.atomic():
        for item in sorted(items, key=lambda i: i.pk):  # lock users in a fixed order
            try:
                result = do(**{target: item}, **kwargs)
            except CreditError as exc:
                raise BulkActionFailed(f"{item}: {exc} Nothing was done.") from exc
            done.extend(result if isinstance(result, list) else [result])
    return done


# --- four-eyes -----------------------------------------------------------------------


def approve(*, action: StaffAction | int, staff: User, note: str = "",
            now: dt.datetime | None = None) -> StaffAction:
    """Apply a pending action. The approver must differ from the requester and hold
    the action's permission (and limit). Applies at most once: the row is locked
    and must still be PENDING. A refusal by the ledger leaves it pending."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock_pending(action)
        if locked.requested_by_id == staff.pk:
            raise ActionNotAllowed("A second staff member must approve this; not the requester.")
        _check_allowed(staff, locked.kind, locked.amount_micros)
        _apply(locked, now=now)
        locked.status = StaffActionStatus.APPLIED
        locked.decided_by = staff
        locked.decided_at = now
        locked.decision_note = (note or "").strip()[:255]
        locked.save()
        return locked


def reject(*, action: StaffAction | int, staff: User, note: str,
           now: dt.datetime | None = None) -> StaffAction:
    """Record a rejection (with a reason); nothing is credited. The requester may
    withdraw their own request; anyone else needs the action's permission."""
    note = (note or "").strip()
    if not note:
        raise InvalidAmount("A reason is required.")
    with transaction.atomic():
        locked = _lock_pending(action)
        if locked.requested_by_id != staff.pk:
            _check_allowed(staff, locked.kind, locked.amount_micros)
        locked.status = StaffActionStatus.REJECTED
        locked.decided_by = staff
        locked.decided_at = now or timezone.now()
        locked.decision_note = note[:255]
        locked.result = "Rejected: nothing was written to the ledger."
        locked.save()
        return locked


def _lock_pending(action: StaffAction | int) -> StaffAction:
    action_id = action.pk if isinstance(action, StaffAction) else action
    locked = StaffAction.objects.select_for_update().filter(pk=action_id).first()
    if locked is None:
        raise ActionNotAllowed(f"Unknown staff action {action_id!r}.")
    if locked.status != StaffActionStatus.PENDING:
        raise ActionNotAllowed(
            f"{locked.get_kind_display()} #{locked.pk} is already {locked.status.lower()}."
        )
    return locked


# --- inside ----------------------------------------------------------------------------


class _DryRun(Exception):
    pass


def _require_positive(amount_micros: object) -> None:
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) or amount_micros <= 0:
        raise InvalidAmount("The amount must be positive.")


def _submit(action: StaffAction, *, staff: User, now: dt.datetime | None) -> StaffAction:
    now = now or timezone.now()
    action.reason = (action.reason or "").strip()[:255]
    if not action.reason:
        raise InvalidAmount("A reason is required.")
    _check_allowed(staff, action.kind, action.amount_micros)
    action.requested_by = staff
    action.requested_at = now
    pending = _needs_approval(action.kind, action.amount_micros)
    with transaction.atomic():
        action.status = StaffActionStatus.PENDING
        action.save()
        if pending:
            # Check the request against the ledger now, so bad input fails at the form.
            try:
                with transaction.atomic():
                    _apply(action, now=now)
                    raise _DryRun
            except _DryRun:
                pass
            action.result = (f"Awaiting a second approver (above "
                             f"{money.display_usd(approval_threshold_micros())}).")
            action.grant_id = action.grant_id if action.kind in _GRANT_TARGETED else None
        else:
            _apply(action, now=now)
            action.status = StaffActionStatus.APPLIED
            action.decided_at = now
        action.save()
    return action


_GRANT_TARGETED = {StaffActionKind.VOID, StaffActionKind.CHANGE_EXPIRY,
                   StaffActionKind.EXPIRE_NOW}


def _apply(action: StaffAction, *, now: dt.datetime) -> None:
    """Make the ledger change through credits.services; sets `result` (and `grant`)."""
    key = f"staff-action:{action.pk}"
    actor = action.requested_by
    kind = action.kind
    if kind in (StaffActionKind.GRANT, StaffActionKind.REFUND):
        extra = {"expires_at": action.expires_at} if action.expires_at else {}
        grant = services.add_credit(
            user=action.user_id, amount_micros=action.amount_micros, kind=action.grant_kind,
            description=action.reason, actor=actor, idempotency_key=key,
            source_reference=action.usage_reference or key, now=now, **extra,
        )
        action.grant = grant
        action.result = (f"Granted {money.display_usd(grant.amount_micros)} "
                         f"{grant.get_kind_display().lower()} credit (grant #{grant.pk}).")
    elif kind == StaffActionKind.ADJUST:
        outcome = services.adjust_credit(
            user=action.user_id, amount_micros=action.amount_micros, reason=action.reason,
            actor=actor, idempotency_key=key, now=now,
        )
        if isinstance(outcome, CreditGrant):
            action.grant = outcome
            action.result = f"Added {money.display_usd(outcome.amount_micros)} (grant #{outcome.pk})."
        else:
            action.result = (f"Took back {money.display_usd(outcome.amount_micros)}; balance "
                             f"{money.display_usd(outcome.balance_micros)}.")
    elif kind == StaffActionKind.VOID:
        services.void_grant(grant=action.grant_id, reason=action.reason, actor=actor, now=now)
        voided = _moved(action.grant_id, EntryType.VOID, f"void:{action.grant_id}")
        action.result = f"Voided {money.display_usd(voided)} of grant #{action.grant_id}."
    elif kind in (StaffActionKind.CHANGE_EXPIRY, StaffActionKind.EXPIRE_NOW):
        new_expiry = action.expires_at if kind == StaffActionKind.CHANGE_EXPIRY else now
        before = _moved(action.grant_id, EntryType.EXPIRY)
        services.change_grant_expiry(grant=action.grant_id, expires_at=new_expiry,
                                     reason=action.reason, actor=actor, now=now)
        expired = _moved(action.grant_id, EntryType.EXPIRY) - before
        if kind == StaffActionKind.EXPIRE_NOW:
            action.expires_at = now
            action.result = f"Expired {money.display_usd(expired)} of grant #{action.grant_id}."
        else:
            when = new_expiry.isoformat(timespec="minutes") if new_expiry else "never"
            action.result = f"Grant #{action.grant_id} now expires {when}."
    elif kind == StaffActionKind.REVOKE_KEYS:
        action.result = f"Revoked {_revoke_keys(action.user_id)} active API key(s)."
    else:  # pragma: no cover - the choices are closed
        raise InvalidAmount(f"Unknown staff action {kind!r}.")


def _moved(grant_id: int, entry_type: str, operation_key: str | None = None) -> int:
    """Micro-dollars taken off a grant by entries of one type (positive)."""
    entries = LedgerEntry.objects.filter(grant_id=grant_id, entry_type=entry_type)
    if operation_key:
        entries = entries.filter(operation_key=operation_key)
    return -(entries.aggregate(total=Sum("amount_micros"))["total"] or 0)


def _revoke_keys(user_id: int) -> int:
    user = User.objects.get(pk=user_id)
    keys = list(ApiKey.objects.filter(user_id=user_id, revoked_at__isnull=True))
    for key in keys:
        revoke_api_key(api_key=key, user=user)
    return len(keys)
