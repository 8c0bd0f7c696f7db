"""Staff money actions (the admin's door into the ledger), with audit and four-eyes.

Every action is recorded as a `StaffAction` row (who, why, when, on whom) in the same
transaction as the ledger entries it causes, which go through credits.services and carry
the same actor and reason. The audit is append-only: what became of a request is a
`StaffActionDecision` row of its own, written with the ledger entries.

A second, different staff member holding the same permission must approve (the request is
checked now by a dry run, rolled back, and applied only on approval):
- grants, refunds and adjustments above ADMIN_APPROVAL_THRESHOLD_USD;
- any money action on the requester's own account, whatever the amount.
The staff member whose account an action credits never approves it.

Support (without `exceed_support_limit`) may move at most SUPPORT_GRANT_LIMIT_USD per action
and SUPPORT_DAILY_LIMIT_USD per day in all (single and bulk actions, pending ones included,
rejected ones not). A staff member's submissions are serialized (`_lock_staff`), so two
requests at once cannot pass the daily limit together.

A refund naming a call gives back at most what the ledger charged for that call less what
was already refunded for it (checked under the user's account lock).

Idempotency: applying uses the key `staff-action:<id>`, so an action credits once only; a
submission may carry an idempotency key (the confirmation page's one-time token) and a
second submission with the same key returns the first one's actions instead of acting again.

Every action has a required internal `reason` (staff and the audit only: the StaffAction and
the entries' `internal_reason`) and an optional `customer_note`, the only text the customer
reads (the grant's note, the history line, the notification); empty, the kind's default
(CUSTOMER_NOTE_DEFAULTS). The customer is told of grants, refunds, adjustments, voids and
expiry changes by credits.notifications (STAFF_EVENTS), queued after the commit.

Refusals raise a credits.exceptions error (ActionNotAllowed for permissions, limits and
approval rules) with nothing written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import ApiKey, User
from accounts.services import revoke_api_key
from credits import money, notices, services
from credits.exceptions import CreditError, GrantNotActive, IdempotencyConflict, InvalidAmount
from credits.models import (
    CreditGrant,
    EntryType,
    GrantKind,
    LedgerEntry,
    StaffAction,
    StaffActionDecision,
    StaffActionKind,
    StaffActionStatus,
)
from credits.selectors import account_figures, call_charge, call_refunded_micros
from credits.services.locks import lock_account


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


# What the customer reads when the staff member wrote no customer note.
CUSTOMER_NOTE_DEFAULTS = {
    StaffActionKind.GRANT: "Credit from TokenBank support",
    StaffActionKind.ADJUST: "Balance adjustment by TokenBank support",
    StaffActionKind.REFUND: "Refund from TokenBank support",
    StaffActionKind.VOID: "Credit removed by TokenBank support",
    StaffActionKind.CHANGE_EXPIRY: "Expiry date changed by TokenBank support",
    StaffActionKind.EXPIRE_NOW: "Credit expired early by TokenBank support",
    StaffActionKind.REVOKE_KEYS: "API keys revoked by TokenBank support",
}


def customer_note_for(action: StaffAction) -> str:
    """The note the customer reads for `action`: the staff member's, else the kind's default
    (negative adjustments read as a correction)."""
    if action.customer_note:
        return action.customer_note
    if action.kind == StaffActionKind.ADJUST and (action.amount_micros or 0) < 0:
        return "Balance correction by TokenBank support"
    return CUSTOMER_NOTE_DEFAULTS[StaffActionKind(action.kind)]


def approval_threshold_micros() -> int:
    return money.usd_to_micros(str(settings.ADMIN_APPROVAL_THRESHOLD_USD))


def support_limit_micros() -> int:
    return money.usd_to_micros(str(settings.SUPPORT_GRANT_LIMIT_USD))


def support_daily_limit_micros() -> int:
    return money.usd_to_micros(str(settings.SUPPORT_DAILY_LIMIT_USD))


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


def moved_today_micros(*, staff: User, now: dt.datetime) -> int:
    """What `staff` granted, refunded and adjusted (either way) on `now`'s day (TIME_ZONE),
    requests awaiting approval included, rejected ones not."""
    start = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    amounts = (StaffAction.objects
               .filter(requested_by=staff, kind__in=LIMITED_KINDS,
                       requested_at__gte=start, requested_at__lt=start + dt.timedelta(days=1))
               .exclude(decision__outcome=StaffActionStatus.REJECTED)
               .values_list("amount_micros", flat=True))
    return sum(abs(a) for a in amounts if a is not None)


def _check_daily_limit(staff: User, adding_micros: int, now: dt.datetime) -> None:
    """Call under `_lock_staff`, so the total read is still the total when the row is written."""
    if staff.has_perm(UNLIMITED_PERMISSION):
        return
    limit = support_daily_limit_micros()
    done = moved_today_micros(staff=staff, now=now)
    if done + adding_micros > limit:
        raise ActionNotAllowed(
            f"This would bring what you granted, refunded or adjusted today to "
            f"{money.display_usd(done + adding_micros)} ({money.display_usd(done)} done), above "
            f"your daily limit of {money.display_usd(limit)}; ask Finance."
        )


def _lock_staff(staff: User) -> None:
    """Serialize one staff member's submissions until the transaction ends: their running
    total for the day and their one-time tokens are read and written under it. A PostgreSQL
    advisory lock keyed by the staff member's id; nothing else takes it and it is taken
    before any ledger lock, so it cannot deadlock with them. (SQLite serializes writes.)"""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_STAFF_LOCK_SPACE, staff.pk])


_STAFF_LOCK_SPACE = 0x57AF  # the advisory locks' first key: "staff submissions"


def _approval_reason(action: StaffAction, staff: User) -> str:
    """Why `action` needs a second approver ('' when it may apply at once)."""
    if action.user_id == staff.pk and action.kind != StaffActionKind.REVOKE_KEYS:
        return "on the requester's own account"
    if (action.kind in LIMITED_KINDS and action.amount_micros is not None
            and abs(action.amount_micros) > approval_threshold_micros()):
        return f"above {money.display_usd(approval_threshold_micros())}"
    return ""


# --- the actions -------------------------------------------------------------------


def grant_credit(*, staff: User, user: User, amount_micros: int, reason: str,
                 kind: str = GrantKind.ADJUSTMENT, expires_at: dt.datetime | None = None,
                 now: dt.datetime | None = None, idempotency_key: str = "",
                 customer_note: str = "") -> StaffAction:
    """Grant credit of `kind` (expiry optional: default per kind)."""
    _require_positive(amount_micros)
    if kind not in GrantKind.values or kind == GrantKind.REFUND:
        raise InvalidAmount(f"Staff cannot grant credit of kind {kind!r}; refunds are separate.")
    return _submit(StaffAction(kind=StaffActionKind.GRANT, user=user, amount_micros=amount_micros,
                               grant_kind=kind, expires_at=expires_at, reason=reason,
                               customer_note=customer_note),
                   staff=staff, now=now, idempotency_key=idempotency_key)


def adjust_balance(*, staff: User, user: User, amount_micros: int, reason: str,
                   now: dt.datetime | None = None, idempotency_key: str = "",
                   customer_note: str = "") -> StaffAction:
    """Add (positive) or take away (negative, never below zero) credit."""
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) or not amount_micros:
        raise InvalidAmount("An adjustment is a non-zero amount.")
    return _submit(StaffAction(kind=StaffActionKind.ADJUST, user=user,
                               amount_micros=amount_micros, reason=reason,
                               customer_note=customer_note),
                   staff=staff, now=now, idempotency_key=idempotency_key)


def refund_credit(*, staff: User, user: User, amount_micros: int, reason: str,
                  usage_reference: str = "", now: dt.datetime | None = None,
                  idempotency_key: str = "", customer_note: str = "") -> StaffAction:
    """Give credit back as a REFUND grant (a REFUND entry), optionally naming the call (its
    request id), which must be one this user was charged for in the ledger; then at most
    that call's charge less what was already refunded for it is given back (InvalidAmount)."""
    _require_positive(amount_micros)
    usage_reference = (usage_reference or "").strip()
    if usage_reference:
        charge = call_charge(request_id=usage_reference)
        if charge is None or charge.user_id != user.pk:
            raise InvalidAmount(f"{user} has no usage record with request id {usage_reference!r}.")
    return _submit(StaffAction(kind=StaffActionKind.REFUND, user=user,
                               amount_micros=amount_micros, grant_kind=GrantKind.REFUND,
                               usage_reference=usage_reference, reason=reason,
                               customer_note=customer_note),
                   staff=staff, now=now, idempotency_key=idempotency_key)


def void_rest_of_grant(*, staff: User, grant: CreditGrant, reason: str,
                       now: dt.datetime | None = None, idempotency_key: str = "",
                       customer_note: str = "") -> StaffAction:
    """Void what is left of one grant (credit held by a call is voided when it settles).
    Raises GrantNotActive for a voided grant; audited, permission-checked like every action."""
    if grant.voided_at is not None:
        raise GrantNotActive(f"Grant #{grant.pk} was already voided.")
    return _submit(StaffAction(kind=StaffActionKind.VOID, user_id=grant.user_id,
                               target_grant=grant, reason=reason, customer_note=customer_note),
                   staff=staff, now=now, idempotency_key=idempotency_key)


def change_expiry(*, staff: User, grant: CreditGrant, expires_at: dt.datetime | None,
                  reason: str, now: dt.datetime | None = None,
                  idempotency_key: str = "", customer_note: str = "") -> StaffAction:
    """Move a grant's expiry (None: never). A past expiry is refused: use expire_now."""
    if expires_at is not None and expires_at <= (now or timezone.now()):
        raise InvalidAmount("The new expiry must be in the future (or use 'expire now').")
    return _submit(StaffAction(kind=StaffActionKind.CHANGE_EXPIRY, user_id=grant.user_id,
                               target_grant=grant, expires_at=expires_at, reason=reason,
                               customer_note=customer_note),
                   staff=staff, now=now, idempotency_key=idempotency_key)


def expire_now(*, staff: User, grant: CreditGrant, reason: str,
               now: dt.datetime | None = None, idempotency_key: str = "",
               customer_note: str = "") -> StaffAction:
    """Expire a grant's unheld remainder at once (an EXPIRY entry); audited."""
    return _submit(StaffAction(kind=StaffActionKind.EXPIRE_NOW, user_id=grant.user_id,
                               target_grant=grant, reason=reason, customer_note=customer_note),
                   staff=staff, now=now, idempotency_key=idempotency_key)


def revoke_api_keys(*, staff: User, user: User, reason: str,
                    now: dt.datetime | None = None, idempotency_key: str = "") -> StaffAction:
    """Revoke every active API key of the user at once (no money moves); audited."""
    return _submit(StaffAction(kind=StaffActionKind.REVOKE_KEYS, user=user, reason=reason),
                   staff=staff, now=now, idempotency_key=idempotency_key)


def on_open_grants(*, staff: User, user: User, do: Callable[..., StaffAction],
                   grant_kind: str = "", now: dt.datetime | None = None,
                   idempotency_key: str = "", **kwargs) -> list[StaffAction]:
    """A grant action (void, change expiry, expire now) on each of the user's grants
    that still has credit (of one kind, if given): one StaffAction per grant. With a key,
    a second call returns the first call's actions."""
    now = now or timezone.now()
    with transaction.atomic():
        _lock_staff(staff)
        if idempotency_key:
            done = _submitted_with(staff, idempotency_key)
            if done:
                return done
        grants = (CreditGrant.objects
                  .filter(user=user, remaining_micros__gt=0, voided_at__isnull=True)
                  .exclude(expires_at__lte=now).order_by("id"))
        if grant_kind:
            grants = grants.filter(kind=grant_kind)
        grants = list(grants)
        if not grants:
            what = GrantKind(grant_kind).label.lower() + " " if grant_kind else ""
            raise GrantNotActive(f"{user} has no {what}credit left to act on.")
        return [do(staff=staff, grant=grant, now=now, **kwargs,
                   idempotency_key=f"{idempotency_key}:{grant.pk}" if idempotency_key else "")
                for grant in grants]


def for_each(items: Iterable, do: Callable[..., StaffAction | list[StaffAction]], *,
             target: str = "user", idempotency_key: str = "", **kwargs) -> list[StaffAction]:
    """A bulk action: `do(**{target: item}, **kwargs)` for every item, all or nothing.

    With an amount, the whole bulk is checked against the staff member's daily limit
    before anything is applied. With an idempotency key (the confirmation's one-time token),
    each item's action gets `<key>:<item id>`, and a second call with the same key returns
    the first call's actions (or decisions) instead of acting again."""
    items = sorted(items, key=lambda i: i.pk)  # lock users in a fixed order
    staff = kwargs.get("staff")
    done: list[StaffAction] = []
    with transaction.atomic():
        if staff is not None:
            _lock_staff(staff)
            if idempotency_key:
                replay = _submitted_with(staff, idempotency_key)
                if replay:
                    return replay
            amount = kwargs.get("amount_micros")
            # Grant, refund, adjust: a bulk counts all its users up front (each action is
            # checked again as it is made; a single one there, after its own permission).
            if len(items) > 1 and isinstance(amount, int) and not isinstance(amount, bool):
                _check_daily_limit(staff, abs(amount) * len(items),
                                   kwargs.get("now") or timezone.now())
        for item in items:
            key = {"idempotency_key": f"{idempotency_key}:{item.pk}"} if idempotency_key else {}
            try:
                result = do(**{target: item}, **kwargs, **key)
            except CreditError as exc:
                raise BulkActionFailed(f"{item}: {exc} Nothing was done.") from exc
            done.extend(result if isinstance(result, list) else [result])
    return done


def _submitted_with(staff: User, idempotency_key: str) -> list[StaffAction]:
    """The actions `staff` submitted under one key (`<key>:...`), oldest first."""
    return list(StaffAction.objects.filter(requested_by=staff,
                                           idempotency_key__startswith=f"{idempotency_key}:")
                .select_related("user", "decision").order_by("pk"))


# --- the confirmation page's preview -------------------------------------------------


@dataclass(frozen=True)
class AccountEffect:
    """What a (bulk) action does to one account, as the confirmation page shows it:
    balance and available before and after it is applied (after the approval, when it waits
    for one), why it waits ('' when it applies at confirmation), and the expiry of each grant
    it creates (None: never)."""

    user: User
    balance_before_micros: int
    available_before_micros: int
    balance_after_micros: int
    available_after_micros: int
    waits_for: str = ""
    results: tuple[str, ...] = ()
    grant_expiries: tuple[dt.datetime | None, ...] = ()

    @property
    def waits(self) -> bool:
        return bool(self.waits_for)


class _Rollback(Exception):
    pass


def preview(items: Iterable, do: Callable[..., StaffAction | list[StaffAction]], *,
            target: str = "user", **kwargs) -> list[AccountEffect]:
    """Run `for_each(items, do, ...)` with every check of the real submission, apply what
    would wait for an approver too, read each account before and after, and roll it all
    back: nothing is written. Raises what the submission would raise (a CreditError)."""
    now = kwargs.setdefault("now", timezone.now())
    effects: list[AccountEffect] = []
    try:
        with transaction.atomic():
            items = list(items)
            user_ids = sorted({_user_id_of(item, target) for item in items})
            before = {uid: account_figures(user_id=uid, now=now) for uid in user_ids}
            actions = for_each(items, do, target=target, **kwargs)
            results: dict[int, list[str]] = {uid: [] for uid in user_ids}
            expiries: dict[int, list] = {uid: [] for uid in user_ids}
            waits: dict[int, str] = {}
            for action in actions:
                decision = action.decided
                if decision is None:  # waits for an approver: see what approving will do
                    waits[action.user_id] = action.approval_reason
                    outcome = _apply(action, now=now)
                    result, grant = outcome.result, outcome.grant
                else:
                    result, grant = decision.result, decision.grant
                results[action.user_id].append(result)
                if grant is not None:
                    expiries[action.user_id].append(grant.expires_at)
            users = User.objects.in_bulk(user_ids)
            for uid in user_ids:
                after = account_figures(user_id=uid, now=now)
                effects.append(AccountEffect(
                    user=users[uid], balance_before_micros=before[uid].balance_micros,
                    available_before_micros=before[uid].available_micros,
                    balance_after_micros=after.balance_micros,
                    available_after_micros=after.available_micros,
                    waits_for=waits.get(uid, ""), results=tuple(results[uid]),
                    grant_expiries=tuple(expiries[uid])))
            raise _Rollback
    except _Rollback:
        pass
    return effects


def _user_id_of(item, target: str) -> int:
    return item.pk if target == "user" else item.user_id


def may_decide(*, action: StaffAction, staff: User) -> str:
    """Why `staff` may not approve `action` ('' when they may): the page offers only what
    they can do."""
    if action.decided is not None:
        return f"It is already {action.decided.outcome.lower()}."
    if action.requested_by_id == staff.pk:
        return "You asked for it: a second staff member must approve it."
    if action.user_id == staff.pk:
        return "It is on your own account: another staff member must approve it."
    try:
        _check_allowed(staff, action.kind, action.amount_micros)
    except ActionNotAllowed as exc:
        return str(exc)
    return ""


# --- four-eyes -----------------------------------------------------------------------


def approve(*, action: StaffAction | int, staff: User, note: str = "",
            now: dt.datetime | None = None, idempotency_key: str = "") -> StaffAction:
    """Apply a pending action: records an APPLIED decision with the ledger entries. The
    approver must differ from the requester and from the user credited, and hold the
    action's permission (and limit). Applies at most once: the request is locked and must
    have no decision yet (a replay with the same key returns it). A refusal by the ledger
    leaves it pending."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock_undecided(action, staff=staff, idempotency_key=idempotency_key)
        if locked.decided is not None:
            return locked  # the same confirmation, submitted again
        if locked.requested_by_id == staff.pk:
            raise ActionNotAllowed("A second staff member must approve this; not the requester.")
        if locked.user_id == staff.pk:
            raise ActionNotAllowed("You cannot approve an action on your own account; "
                                   "another staff member must.")
        _check_allowed(staff, locked.kind, locked.amount_micros)
        outcome = _apply(locked, now=now)
        locked.decision = StaffActionDecision.objects.create(
            action=locked, outcome=StaffActionStatus.APPLIED, decided_by=staff, decided_at=now,
            note=(note or "").strip()[:255], result=outcome.result, grant=outcome.grant,
            idempotency_key=idempotency_key)
        return locked


def reject(*, action: StaffAction | int, staff: User, note: str,
           now: dt.datetime | None = None, idempotency_key: str = "") -> StaffAction:
    """Record a rejection (with a reason); nothing is credited. The requester may
    withdraw their own request; anyone else needs the action's permission."""
    note = (note or "").strip()
    if not note:
        raise InvalidAmount("A reason is required.")
    with transaction.atomic():
        locked = _lock_undecided(action, staff=staff, idempotency_key=idempotency_key)
        if locked.decided is not None:
            return locked
        if locked.requested_by_id != staff.pk:
            _check_allowed(staff, locked.kind, locked.amount_micros)
        locked.decision = StaffActionDecision.objects.create(
            action=locked, outcome=StaffActionStatus.REJECTED, decided_by=staff,
            decided_at=now or timezone.now(), note=note[:255],
            result="Rejected: nothing was written to the ledger.",
            idempotency_key=idempotency_key)
        return locked


def _lock_undecided(action: StaffAction | int, *, staff: User,
                    idempotency_key: str) -> StaffAction:
    """The request, locked (FOR UPDATE: the row itself is never updated), still undecided,
    or decided by `staff` under `idempotency_key` (a replay). Raises ActionNotAllowed."""
    action_id = action.pk if isinstance(action, StaffAction) else action
    locked = StaffAction.objects.select_for_update(of=("self",)).filter(pk=action_id).first()
    if locked is None:
        raise ActionNotAllowed(f"Unknown staff action {action_id!r}.")
    decision = StaffActionDecision.objects.filter(action_id=action_id).first()
    if decision is not None:
        if (idempotency_key and decision.idempotency_key == idempotency_key
                and decision.decided_by_id == staff.pk):
            locked.decision = decision
            return locked
        raise ActionNotAllowed(
            f"{locked.get_kind_display()} #{locked.pk} is already {decision.outcome.lower()}."
        )
    return locked


# --- inside ----------------------------------------------------------------------------


class _DryRun(Exception):
    pass


@dataclass(frozen=True)
class _Outcome:
    result: str
    grant: CreditGrant | None = None  # the grant the action created


def _require_positive(amount_micros: object) -> None:
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) or amount_micros <= 0:
        raise InvalidAmount("The amount must be positive.")


def _submit(action: StaffAction, *, staff: User, now: dt.datetime | None,
            idempotency_key: str = "") -> StaffAction:
    now = now or timezone.now()
    action.reason = (action.reason or "").strip()[:255]
    if not action.reason:
        raise InvalidAmount("A reason is required.")
    action.customer_note = (action.customer_note or "").strip()[:255]
    _check_allowed(staff, action.kind, action.amount_micros)
    action.requested_by = staff
    action.requested_at = now
    action.idempotency_key = idempotency_key
    action.approval_reason = _approval_reason(action, staff)
    if action.kind == StaffActionKind.EXPIRE_NOW and not action.approval_reason:
        action.expires_at = now  # when it expired (an approved one: the decision's time)
    with transaction.atomic():
        _lock_staff(staff)
        if idempotency_key:
            replay = StaffAction.objects.filter(idempotency_key=idempotency_key).first()
            if replay is not None:
                return _replayed(replay, action)
        if action.kind in LIMITED_KINDS:
            _check_daily_limit(staff, abs(action.amount_micros), now)
        action.save(force_insert=True)
        if action.approval_reason:
            # Check the request against the ledger now, so bad input fails at the form.
            try:
                with transaction.atomic():
                    _apply(action, now=now)
                    raise _DryRun
            except _DryRun:
                pass
        else:
            outcome = _apply(action, now=now)
            action.decision = StaffActionDecision.objects.create(
                action=action, outcome=StaffActionStatus.APPLIED, decided_at=now,
                result=outcome.result, grant=outcome.grant)
    return action


def _replayed(first: StaffAction, again: StaffAction) -> StaffAction:
    """The action submitted first under a key, if `again` asks for the same thing."""
    same = ("requested_by_id", "kind", "user_id", "amount_micros", "target_grant_id")
    if any(getattr(first, f) != getattr(again, f) for f in same):
        raise IdempotencyConflict(
            f"The confirmation {first.idempotency_key!r} was used for another action.")
    return first


def _apply(action: StaffAction, *, now: dt.datetime) -> _Outcome:
    """Make the ledger change through credits.services; says what was done."""
    key = f"staff-action:{action.pk}"
    actor = action.requested_by
    kind = action.kind
    note = customer_note_for(action)  # what the customer reads; the reason stays internal
    internal = action.reason
    if kind != StaffActionKind.REVOKE_KEYS:
        notices.enqueue_staff_notice(user_id=action.user_id, kind=kind,
                                     amount_micros=action.amount_micros or 0)
    if kind in (StaffActionKind.GRANT, StaffActionKind.REFUND):
        extra = {"expires_at": action.expires_at} if action.expires_at else {}
        with transaction.atomic():
            if action.usage_reference:
                _check_call_refundable(action)
            grant = services.add_credit(
                user=action.user_id, amount_micros=action.amount_micros, kind=action.grant_kind,
                description=note, internal_reason=internal, actor=actor, idempotency_key=key,
                source_reference=action.usage_reference or key, now=now, **extra,
            )
        return _Outcome(f"Granted {money.display_usd(grant.amount_micros)} "
                        f"{grant.get_kind_display().lower()} credit (grant #{grant.pk}).", grant)
    if kind == StaffActionKind.ADJUST:
        outcome = services.adjust_credit(
            user=action.user_id, amount_micros=action.amount_micros, reason=note,
            internal_reason=internal, actor=actor, idempotency_key=key, now=now,
        )
        if isinstance(outcome, CreditGrant):
            return _Outcome(f"Added {money.display_usd(outcome.amount_micros)} "
                            f"(grant #{outcome.pk}).", outcome)
        return _Outcome(f"Took back {money.display_usd(outcome.amount_micros)}; balance "
                        f"{money.display_usd(outcome.balance_micros)}.")
    grant_id = action.target_grant_id
    if kind == StaffActionKind.VOID:
        services.void_grant(grant=grant_id, reason=note, internal_reason=internal, actor=actor,
                            now=now)
        voided = _moved(grant_id, EntryType.VOID, f"void:{grant_id}")
        return _Outcome(f"Voided {money.display_usd(voided)} of grant #{grant_id}.")
    if kind in (StaffActionKind.CHANGE_EXPIRY, StaffActionKind.EXPIRE_NOW):
        new_expiry = action.expires_at if kind == StaffActionKind.CHANGE_EXPIRY else now
        before = _moved(grant_id, EntryType.EXPIRY)
        services.change_grant_expiry(grant=grant_id, expires_at=new_expiry, reason=note,
                                     internal_reason=internal, actor=actor, now=now)
        expired = _moved(grant_id, EntryType.EXPIRY) - before
        if kind == StaffActionKind.EXPIRE_NOW:
            return _Outcome(f"Expired {money.display_usd(expired)} of grant #{grant_id}.")
        when = new_expiry.isoformat(timespec="minutes") if new_expiry else "never"
        return _Outcome(f"Grant #{grant_id} now expires {when}.")
    if kind == StaffActionKind.REVOKE_KEYS:
        return _Outcome(f"Revoked {_revoke_keys(action.user_id)} active API key(s).")
    raise InvalidAmount(f"Unknown staff action {kind!r}.")  # pragma: no cover - closed choices


def _check_call_refundable(action: StaffAction) -> None:
    """A refund naming a call gives back at most that call's charge less what was already
    refunded for it. Takes the user's account lock first (the grant is then written under
    it), so two refunds of one call at once are counted one after the other."""
    lock_account(action.user_id)
    request_id = action.usage_reference
    charge = call_charge(request_id=request_id)
    if charge is None or charge.user_id != action.user_id:
        raise InvalidAmount(f"No call {request_id!r} of this user was charged.")
    refunded = call_refunded_micros(request_id=request_id, user_id=action.user_id)
    left = max(0, charge.charged_micros - refunded)
    if action.amount_micros > left:
        raise InvalidAmount(
            f"Call {request_id} was charged {money.display_usd(charge.charged_micros)} and "
            f"{money.display_usd(refunded)} of it was refunded already: at most "
            f"{money.display_usd(left)} can be refunded."
        )


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
