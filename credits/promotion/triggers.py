"""The one service every trigger's door calls: something happened to a user that may earn
a milestone or settle their referral. Doors (the first-token and purchase receivers, the
email link, the ledger's paid-call signal) stay thin; the evaluation runs after commit in
the worker (`credits.tasks.evaluate_promotions`, by name), and is idempotent."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from config.queue import enqueue_on_commit
from credits.models import CreditGrant
from credits.promotion import award, milestones, referrals


def user_progressed(*, user_id: int) -> None:
    """Evaluate the user's milestones and referral once the current transaction commits,
    when there is anything to settle (a pending referral, a tier not awarded yet)."""
    if not milestones.has_open_work(user_id):
        return
    enqueue_on_commit("credits.tasks.evaluate_promotions", user_id, inline_if_broker_down=True)


def first_token(*, user_id: int) -> CreditGrant | None:
    """The first token: today's first-token award, in its transaction, then the rest."""
    grant = award.apply_first_token_promotion(user=user_id)
    user_progressed(user_id=user_id)
    return grant


def purchase_paid(*, user_id: int, payment_fingerprint: str = "") -> None:
    """A purchase was credited (billing's signal, in its transaction): remember the payment
    method for the referral rules, then evaluate after commit."""
    referrals.record_payment_fingerprint(user_id=user_id, fingerprint=payment_fingerprint)
    user_progressed(user_id=user_id)


def paid_call(*, user_id: int) -> None:
    """A paid call was charged (the ledger's signal, in its transaction): evaluate after
    commit only when a usage milestone is still open for the user."""
    milestones.after_paid_call(user_id=user_id)


@dataclass(frozen=True)
class Evaluation:
    milestone_grants: tuple[CreditGrant, ...]
    referral: referrals.ReferralOutcome


def evaluate_promotions(*, user_id: int, now: dt.datetime | None = None) -> Evaluation:
    """Award the milestones whose triggers are true, then settle the user's referral.
    Idempotent (each step is)."""
    grants = milestones.evaluate_milestones(user=user_id, now=now)
    outcome = referrals.settle_referral(referred=user_id, now=now)
    return Evaluation(milestone_grants=tuple(grants), referral=outcome)
