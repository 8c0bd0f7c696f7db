"""The credits app's tables, one module per concern; every name is importable from here."""

from credits.models.abuse import (
    DomainRuleAction,
    EmailDomainRule,
    PromotionClaim,
    PromotionReview,
    ReviewStatus,
    SignupRecord,
)
from credits.models.ledger import (
    CreditAccount,
    CreditGrant,
    CreditHold,
    EntryType,
    GrantKind,
    HoldStatus,
    ImmutableEntryError,
    LedgerEntry,
    LedgerEntryQuerySet,
    TakeBack,
)
from credits.models.milestones import ExpiryRule, PromotionTier, TierAward, TierList, TierTrigger
from credits.models.notifications import Notification, NotificationEvent
from credits.models.promotions import Promotion, PromotionAssignment, PromotionKind, PromotionVariant
from credits.models.reconciliation import LedgerMismatch, ReconciliationRun
from credits.models.referrals import (
    PaymentFingerprint,
    Referral,
    ReferralCode,
    ReferralCondition,
    ReferralProgram,
    ReferralStatus,
)
from credits.models.staff import (
    StaffAction,
    StaffActionDecision,
    StaffActionKind,
    StaffActionStatus,
)
from credits.models.sweeps import Sweep, SweepFailure

__all__ = [
    "CreditAccount",
    "CreditGrant",
    "CreditHold",
    "DomainRuleAction",
    "EmailDomainRule",
    "EntryType",
    "ExpiryRule",
    "GrantKind",
    "HoldStatus",
    "ImmutableEntryError",
    "LedgerEntry",
    "LedgerEntryQuerySet",
    "LedgerMismatch",
    "Notification",
    "NotificationEvent",
    "PaymentFingerprint",
    "Promotion",
    "PromotionAssignment",
    "PromotionClaim",
    "PromotionKind",
    "PromotionReview",
    "PromotionTier",
    "PromotionVariant",
    "ReconciliationRun",
    "Referral",
    "ReferralCode",
    "ReferralCondition",
    "ReferralProgram",
    "ReferralStatus",
    "ReviewStatus",
    "SignupRecord",
    "StaffAction",
    "StaffActionDecision",
    "StaffActionKind",
    "StaffActionStatus",
    "Sweep",
    "SweepFailure",
    "TakeBack",
    "TierAward",
    "TierList",
    "TierTrigger",
]
