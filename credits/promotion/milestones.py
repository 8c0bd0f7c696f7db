"""Tiered milestones: each tier of the user's tier list is awarded once, from the point in
the ledger where its trigger became true.

A user plays the tier list of their assigned variant (else of its promotion). Without a
list, the first token is the only milestone (today's promotion, `award`). A list's
FIRST_TOKEN tier is awarded by `award.apply_first_token_promotion` too (its terms come
from the tier: credits.models.promotions.terms_for); every other tier is awarded here:

- TOKENS / SPEND: the calls settled (captures, usage debits) inside the window add up to
  the threshold; the tier is earned at the call that crossed it, even when the evaluation
  runs later (a queue delay never costs a user a milestone, nor earns one late).
- FIRST_PURCHASE: the first PURCHASED grant inside the window; `match_percent` grants that
  share of it, up to the tier's amount.
- EMAIL_VERIFIED: the address was verified inside the window.

Every tier goes through the same abuse controls as the first token: the promotion's kill
switch, the velocity limits that withheld the sign-up credit, the spend caps (which pause
the promotions), the email verification lock. Exactly once: under the user's row lock,
and by TierAward's unique constraints (per user, per normalized email) and the grant's
idempotency key "promotion:tier:<id>".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Sum

from accounts.emails import canonical_email
from accounts.models import User
from config.queue import enqueue_on_commit
from credits import money, services
from credits.models import (
    CreditGrant,
    CreditHold,
    EntryType,
    GrantKind,
    HoldStatus,
    LedgerEntry,
    PromotionAssignment,
    PromotionTier,
    Referral,
    ReferralStatus,
    SignupRecord,
    TierAward,
    TierTrigger,
)
from credits.models.promotions import (
    SIGNUP_PROMOTION_KINDS,
    PromotionTerms,
    tier_list_id_of,
    user_promotion_terms,
)
from credits.promotion.award import AWARD_LOCK_KEY, cap_reached
from credits.promotion.expiry import grant_expiry
from credits.services.locks import advisory_lock, lock_account, lock_user
from credits.services.validation import now_or

PAID_CALL_TYPES = [EntryType.USAGE, EntryType.CAPTURE]
USAGE_TRIGGERS = [TierTrigger.TOKENS, TierTrigger.SPEND]


def tier_key(tier_id: int) -> str:
    return f"promotion:tier:{tier_id}"


@dataclass(frozen=True)
class Playing:
    """What a user plays for: their assignment's promotion and variant, and its tiers."""

    promotion: object | None
    variant_id: int | None
    tiers: tuple[PromotionTier, ...]

    @property
    def active(self) -> bool:
        return self.promotion is not None and self.promotion.is_active


def playing(user_id: int) -> Playing:
    """The user's tier list (two queries; nothing when they play none)."""
    assignment = (PromotionAssignment.objects.select_related("promotion", "variant")
                  .filter(user_id=user_id).first())
    if assignment is None or assignment.promotion is None or (
            assignment.promotion.kind not in SIGNUP_PROMOTION_KINDS):
        return Playing(promotion=None, variant_id=None, tiers=())
    list_id = tier_list_id_of(assignment.promotion, assignment.variant)
    tiers = tuple(PromotionTier.objects.filter(tier_list_id=list_id).order_by("position", "id")
                  ) if list_id else ()
    return Playing(promotion=assignment.promotion, variant_id=assignment.variant_id, tiers=tiers)


def deadline_of(user: User, tier: PromotionTier) -> dt.datetime | None:
    if tier.window_seconds is None:
        return None
    return user.date_joined + dt.timedelta(seconds=tier.window_seconds)


@dataclass(frozen=True)
class TriggerState:
    """How far a user is towards a tier's trigger, read from the ledger."""

    current: int  # tokens, micro-dollars, or 0/1
    target: int
    met_at: dt.datetime | None  # when it became true (inside the window); None: not (yet)
    basis_micros: int = 0  # FIRST_PURCHASE: the purchase the match is taken on


def trigger_state(user: User, tier: PromotionTier) -> TriggerState:
    """Where `user` stands with `tier`'s trigger: counted from the ledger inside the window
    (inclusive of its last instant)."""
    deadline = deadline_of(user, tier)
    if tier.trigger == TierTrigger.FIRST_TOKEN:
        at = user.first_token_at
        ok = at is not None and (deadline is None or at <= deadline)
        return TriggerState(current=int(ok), target=1, met_at=at if ok else None)
    if tier.trigger == TierTrigger.EMAIL_VERIFIED:
        at = user.email_verified_at
        ok = at is not None and (deadline is None or at <= deadline)
        return TriggerState(current=int(ok), target=1, met_at=at if ok else None)
    if tier.trigger == TierTrigger.FIRST_PURCHASE:
        grants = CreditGrant.objects.filter(user_id=user.pk, kind=GrantKind.PURCHASED)
        first = grants.order_by("granted_at", "id").values_list("granted_at", "amount_micros").first()
        ok = first is not None and (deadline is None or first[0] <= deadline)
        return TriggerState(current=int(ok), target=1, met_at=first[0] if ok else None,
                            basis_micros=first[1] if ok else 0)
    if tier.trigger == TierTrigger.SPEND:
        rows = LedgerEntry.objects.filter(user_id=user.pk, entry_type__in=PAID_CALL_TYPES,
                                          created_at__gte=user.date_joined)
        if deadline is not None:
            rows = rows.filter(created_at__lte=deadline)
        return _crossing(rows, order=("created_at", "id"), value="amount_micros", sign=-1,
                         at="created_at", target=tier.threshold or 0)
    # TOKENS: the delivered tokens of the calls charged inside the window.
    holds = CreditHold.objects.filter(user_id=user.pk, status=HoldStatus.CAPTURED,
                                      captured_micros__gt=0, settled_at__gte=user.date_joined)
    if deadline is not None:
        holds = holds.filter(settled_at__lte=deadline)
    return _crossing(holds, order=("settled_at", "id"), value="delivered_tokens", sign=1,
                     at="settled_at", target=tier.threshold or 0)


def _crossing(rows, *, order: tuple[str, str], value: str, sign: int, at: str,
              target: int) -> TriggerState:
    """The running total of `value` over `rows`, and the moment it reached `target`: one
    aggregate, and a walk over the rows only once the total is there."""
    total = sign * (rows.aggregate(total=Sum(value))["total"] or 0)
    if total < target or target <= 0:
        return TriggerState(current=max(total, 0), target=target, met_at=None)
    running = 0
    for amount, moment in rows.order_by(*order).values_list(value, at).iterator():
        running += sign * amount
        if running >= target:
            return TriggerState(current=total, target=target, met_at=moment)
    return TriggerState(current=total, target=target, met_at=None)  # unreachable


def tier_amount(tier: PromotionTier, state: TriggerState) -> int:
    """What the tier grants: its amount, or for a matched purchase that share, capped."""
    if tier.trigger == TierTrigger.FIRST_PURCHASE and tier.match_percent:
        return min(tier.amount_micros, state.basis_micros * tier.match_percent // 100)
    return tier.amount_micros


# --- awarding ------------------------------------------------------------------------------


def evaluate_milestones(*, user: User | int, now: dt.datetime | None = None) -> list[CreditGrant]:
    """Award every tier of the user's list whose trigger is true and that they do not hold
    yet (the FIRST_TOKEN tier is the first-token award's). Idempotent; safe to run any
    number of times, concurrently. Returns the grants made now."""
    user_id = user.pk if isinstance(user, User) else user
    plan = playing(user_id)
    if not plan.tiers:
        return []
    held = set(TierAward.objects.filter(user_id=user_id).values_list("tier_id", flat=True))
    made = []
    for tier in plan.tiers:
        if tier.trigger == TierTrigger.FIRST_TOKEN or tier.pk in held:
            continue
        result = award_tier(user=user_id, tier=tier, now=now)
        if result.grant is not None and result.created:
            made.append(result.grant)
    return made


@dataclass(frozen=True)
class TierResult:
    grant: CreditGrant | None
    created: bool = False
    reason: str = ""  # why nothing was granted


def award_tier(*, user: User | int, tier: PromotionTier, now: dt.datetime | None = None
               ) -> TierResult:
    """Grant `tier` to `user` iff its trigger is true, once. One transaction: the user's row
    lock, the award lock (caps), the TierAward row (unique per user and per normalized
    email: a concurrent award for the same tier fails there and grants nothing), the grant
    (idempotency key "promotion:tier:<id>"), its expiry by the promotion's policy.
    Returns the grant (an existing one when it was awarded before) or the reason."""
    now = now_or(now)
    with transaction.atomic():
        locked = lock_user(user)
        existing = TierAward.objects.filter(tier_id=tier.pk, user_id=locked.pk).first()
        if existing is not None:
            return TierResult(grant=existing.grant)
        plan = playing(locked.pk)
        if tier.pk not in {t.pk for t in plan.tiers}:
            return TierResult(grant=None, reason="not this user's tier")
        if not plan.active:
            return TierResult(grant=None, reason="promotion off")
        if locked.promotion_withheld_reason:  # velocity limits, claimed address, paused
            return TierResult(grant=None, reason=locked.promotion_withheld_reason)
        state = trigger_state(locked, tier)
        if state.met_at is None:
            return TierResult(grant=None, reason="trigger not met")
        amount = tier_amount(tier, state)
        if amount <= 0:
            return TierResult(grant=None, reason="nothing to match")
        advisory_lock(AWARD_LOCK_KEY)  # after the user's row, as the first-token award
        if cap_reached(amount_micros=amount, now=now):
            return TierResult(grant=None, reason="spend cap")
        signup = SignupRecord.objects.filter(user_id=locked.pk).order_by("-created_at").first()
        try:
            with transaction.atomic():
                claim = TierAward.objects.create(
                    tier=tier, user_id=locked.pk,
                    email_normalized=locked.email_normalized or canonical_email(locked.email),
                    amount_micros=amount, network=signup.network if signup else "",
                    triggered_at=state.met_at, awarded_at=now)
        except IntegrityError:  # this address already had this tier (another account)
            return TierResult(grant=None, reason="address already awarded")
        expiry = tier_expiry(tier, plan, now=now)
        grant = services.grant_locked(
            lock_account(locked), amount_micros=amount, kind=GrantKind.PROMOTIONAL,
            description=f"Milestone: {describe(tier)}", actor=None, **expiry.grant_kwargs(),
            idempotency_key=tier_key(tier.pk), source_reference=f"tier:{tier.pk}", now=now,
            promotion_variant_id=plan.variant_id)
        TierAward.objects.filter(pk=claim.pk).update(grant=grant)
        if settings.PROMOTION_REQUIRE_EMAIL_VERIFICATION and locked.email_verified_at is None:
            CreditGrant.objects.filter(pk=grant.pk).update(awaiting_verification=True)
            grant.awaiting_verification = True
        return TierResult(grant=grant, created=True)


def tier_expiry(tier: PromotionTier, plan: Playing, *, now: dt.datetime):
    promotion = plan.promotion
    return grant_expiry(
        rule=tier.expiry_rule or promotion.expiry_rule,
        expiry_days=tier.expiry_days or promotion.expiry_days
        or int(settings.PROMOTION_EXPIRY_DAYS),
        extension_days=promotion.extension_days, expiry_cap_days=promotion.expiry_cap_days,
        now=now)


def describe(tier: PromotionTier) -> str:
    """The tier in a few words a user understands."""
    if tier.name:
        return tier.name
    within = f" within {_duration(tier.window_seconds)}" if tier.window_seconds else ""
    if tier.trigger == TierTrigger.FIRST_TOKEN:
        return f"First token{within} of signing up"
    if tier.trigger == TierTrigger.TOKENS:
        return f"{tier.threshold:,} tokens{within}"
    if tier.trigger == TierTrigger.SPEND:
        return f"{money.display_usd(tier.threshold or 0)} of calls{within}"
    if tier.trigger == TierTrigger.FIRST_PURCHASE:
        return f"First purchase{within}"
    return f"Verify your email{within}"


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


# --- doors: when to evaluate -------------------------------------------------------------


def has_open_usage_tier(user_id: int) -> bool:
    """Does a paid call matter to this user's milestones (a TOKENS or SPEND tier not yet
    awarded)? Two small queries; the ledger's paid-call signal asks this after commit."""
    plan = playing(user_id)
    open_ids = [t.pk for t in plan.tiers if t.trigger in USAGE_TRIGGERS]
    if not open_ids or not plan.active:
        return False
    return len(open_ids) > TierAward.objects.filter(user_id=user_id, tier_id__in=open_ids).count()


USAGE_TIERS_CACHE_KEY = "credits:milestones:usage-tiers-exist"
USAGE_TIERS_CACHE_SECONDS = 60
# Each process also remembers the answer this long: a paid call then asks neither the
# database nor the cache. A tier saved in another process is noticed within it, and the
# evaluation reads the crossing point from the ledger, so nothing is lost by the delay.
USAGE_TIERS_MEMO_SECONDS = 10
_memo: tuple[float, bool] = (0.0, False)  # (good until, by time.monotonic(); the answer)


def usage_tiers_exist() -> bool:
    """Is there any TOKENS or SPEND tier at all? Remembered by the process for
    USAGE_TIERS_MEMO_SECONDS and cached for a minute (both forgotten when a tier is saved),
    so a paid call costs nothing while no promotion counts usage."""
    global _memo
    good_until, answer = _memo
    if time.monotonic() < good_until:
        return answer
    cached = _in_savepoint(cache.get, USAGE_TIERS_CACHE_KEY)  # None: the cache is down
    if cached is None:
        cached = PromotionTier.objects.filter(trigger__in=USAGE_TRIGGERS).exists()
        _in_savepoint(cache.set, USAGE_TIERS_CACHE_KEY, cached, USAGE_TIERS_CACHE_SECONDS)
    _memo = (time.monotonic() + USAGE_TIERS_MEMO_SECONDS, cached)
    return cached


def _in_savepoint(cache_call, *args):
    """A cache call made inside a paid call's transaction; None if it fails. The database
    cache (the embedded default) queries on the ledger's own connection, so a failing
    query there would abort the transaction that charges the call: it runs under a
    savepoint (two statements, at most once per USAGE_TIERS_MEMO_SECONDS)."""
    try:
        with transaction.atomic():
            return cache_call(*args)
    except Exception:
        return None


def forget_usage_tiers() -> None:
    """A tier was saved: ask again (this process now, the others within their memo)."""
    global _memo
    _memo = (0.0, False)
    with contextlib.suppress(Exception):  # the cache is down: it expires within a minute
        cache.delete(USAGE_TIERS_CACHE_KEY)


def after_paid_call(*, user_id: int) -> None:
    """In a paid call's transaction: evaluate the user's milestones in the worker after
    commit when a usage tier is still open for them. Without any usage tier (the default)
    nothing is queried nor enqueued; the evaluation reads the crossing point from the
    ledger, so a tier noticed on a later call is still earned where it was crossed."""
    if usage_tiers_exist() and has_open_usage_tier(user_id):
        enqueue_on_commit("credits.tasks.evaluate_promotions", user_id,
                          inline_if_broker_down=True)


def has_open_work(user_id: int) -> bool:
    """Anything a first token, purchase or verification could settle for this user: a
    pending referral, or a tier (other than the first token's) not awarded yet."""
    if Referral.objects.filter(referred_id=user_id, status=ReferralStatus.PENDING).exists():
        return True
    plan = playing(user_id)
    open_ids = {t.pk for t in plan.tiers if t.trigger != TierTrigger.FIRST_TOKEN}
    if not open_ids or not plan.active:
        return False
    return bool(open_ids - set(TierAward.objects.filter(user_id=user_id, tier_id__in=open_ids)
                                .values_list("tier_id", flat=True)))


# --- what users see ----------------------------------------------------------------------


@dataclass(frozen=True)
class MilestoneView:
    position: int
    label: str
    amount_micros: int
    status: str  # "earned", "open", "missed", "withheld"
    current: int
    target: int
    unit: str  # "tokens", "usd", "step"
    deadline: dt.datetime | None
    match_percent: int | None = None

    @property
    def percent(self) -> int:
        if self.status == "earned":
            return 100
        return min(100, self.current * 100 // self.target) if self.target else 0

    @property
    def amount_display(self) -> str:
        return money.display_usd(self.amount_micros, places=0)

    @property
    def progress_display(self) -> str:
        if self.unit == "tokens":
            return f"{min(self.current, self.target):,} of {self.target:,} tokens"
        if self.unit == "usd":
            return (f"{money.display_usd(min(self.current, self.target))} of "
                    f"{money.display_usd(self.target)}")
        return "done" if self.current else "not yet"


@dataclass(frozen=True)
class MilestoneProgress:
    milestones: tuple[MilestoneView, ...]

    @property
    def next(self) -> MilestoneView | None:
        return next((m for m in self.milestones if m.status == "open"), None)

    @property
    def earned_micros(self) -> int:
        return sum(m.amount_micros for m in self.milestones if m.status == "earned")


def milestone_progress(*, user: User, now: dt.datetime | None = None) -> MilestoneProgress:
    """Every milestone of the user's promotion with its status and progress, for the
    onboarding page and the dashboard. Without a tier list: the first token alone."""
    now = now_or(now)
    plan = playing(user.pk)
    terms = user_promotion_terms(user)
    views = []
    awarded = dict(TierAward.objects.filter(user_id=user.pk).values_list("tier_id", "amount_micros"))
    tiers = plan.tiers
    if not any(t.trigger == TierTrigger.FIRST_TOKEN for t in tiers) and terms.amount_micros:
        views.append(_first_token_view(user, terms, position=0, now=now))
    for tier in tiers:
        if tier.trigger == TierTrigger.FIRST_TOKEN:
            views.append(_first_token_view(user, terms, position=tier.position, now=now,
                                           label=describe(tier)))
            continue
        state = trigger_state(user, tier)
        deadline = deadline_of(user, tier)
        if tier.pk in awarded:
            status = "earned"
        elif not plan.active or user.promotion_withheld_reason:
            status = "withheld"
        elif deadline is not None and now > deadline:
            status = "missed"
        else:
            status = "open"
        unit = {TierTrigger.TOKENS: "tokens", TierTrigger.SPEND: "usd"}.get(tier.trigger, "step")
        views.append(MilestoneView(
            position=tier.position, label=describe(tier),
            amount_micros=awarded.get(tier.pk, tier.amount_micros), status=status,
            current=state.current, target=state.target, unit=unit, deadline=deadline,
            match_percent=tier.match_percent))
    return MilestoneProgress(milestones=tuple(views))


def _first_token_view(user: User, terms: PromotionTerms, *, position: int, now: dt.datetime,
                      label: str = "") -> MilestoneView:
    deadline = terms.deadline_for(user)
    if user.promotion_claimed:
        status = "earned"
    elif terms.open_to(user, now=now):
        status = "open"
    elif user.promotion_withheld_reason or not terms.active:
        status = "withheld"
    else:
        status = "missed"
    return MilestoneView(
        position=position, label=label or f"First token within {_duration(terms.window_seconds)}"
        " of signing up", amount_micros=terms.amount_micros, status=status,
        current=int(user.first_token_at is not None), target=1, unit="step", deadline=deadline)
