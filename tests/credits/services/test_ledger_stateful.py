"""Random sequences of ledger operations, checked step by step against a tiny reference model."""

import datetime as dt

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from accounts.models import User
from credits import services, staff_actions
from credits.exceptions import InsufficientCredits
from credits.models import (
    CreditGrant,
    CreditHold,
    GrantKind,
    HoldStatus,
    StaffAction,
    StaffActionStatus,
    TakeBack,
)
from credits.staff_actions import ActionNotAllowed

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
APPROVAL_THRESHOLD_MICROS = 2_500_000
NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)
amounts = st.integers(min_value=1, max_value=5_000_000)


class LedgerMachine(RuleBasedStateMachine):
    """The model knows each grant's remaining/held/owed, each hold's reservation per grant
    and its journal (when it last wrote, what it says was delivered), and each take-back's
    taken/pending/shortfall."""

    @initialize()
    def new_user(self):
        self.now = START
        # Registered long ago: no pending promotion to borrow against.
        self.user = User.objects.create_user(
            f"stateful-{User.objects.count()}@example.com", "pw", date_joined=START - dt.timedelta(days=1)
        )
        self.grants: dict[int, dict] = {}
        self.holds: dict = {}
        self.take_backs: dict[str, dict] = {}
        self.journals: dict = {}  # hold id -> {"heard": moment, "delivered", "tokens", "amount"}
        # Two staff members who may do anything (superusers): four-eyes still applies.
        n = User.objects.count()
        self.staff = [User.objects.create_user(f"staff-{n}-{i}@example.com", "pw", is_staff=True,
                                               is_superuser=True) for i in range(2)]
        self.pending: dict[int, int] = {}  # staff action id -> amount, awaiting approval
        self.decided: set[int] = set()

    # --- the reference model -----------------------------------------------------
    def usable(self, grant) -> bool:
        return not grant["voided"] and (grant["expires_at"] is None or grant["expires_at"] > self.now)

    def burn_order(self):
        return sorted(self.grants.items(),
                      key=lambda kv: (kv[1]["expires_at"] or NEVER, kv[1]["granted_at"], kv[0]))

    def sweep(self):
        for grant in self.grants.values():
            if grant["expires_at"] is not None and grant["expires_at"] <= self.now:
                grant["remaining"] = grant["held"]

    def free(self) -> int:
        return sum(g["remaining"] - g["held"] for g in self.grants.values() if self.usable(g))

    # --- rules --------------------------------------------------------------------
    @rule(amount=amounts, lifetime=st.one_of(st.none(), st.integers(1, 120)),
          kind=st.sampled_from([GrantKind.PURCHASED, GrantKind.PROMOTIONAL, GrantKind.ADJUSTMENT]))
    def grant(self, amount, lifetime, kind):
        expires_at = None if lifetime is None else self.now + dt.timedelta(seconds=lifetime)
        grant = services.add_credit(user=self.user, amount_micros=amount, kind=kind,
                                    expires_at=expires_at, now=self.now)
        self.grants[grant.pk] = {"remaining": amount, "held": 0, "pending": 0,
                                 "expires_at": expires_at, "granted_at": self.now, "voided": False}

    @rule(amount=amounts)
    def debit(self, amount):
        if self.free() < amount:
            with pytest.raises(InsufficientCredits):
                services.use_credits(user=self.user, amount_micros=amount, now=self.now)
            return
        services.use_credits(user=self.user, amount_micros=amount, now=self.now)
        self.sweep()
        self.take_in_burn_order(amount, field="remaining")

    @rule(amount=amounts)
    def authorize(self, amount):
        if self.free() < amount:
            with pytest.raises(InsufficientCredits):
                services.authorize(user=self.user, amount_micros=amount, now=self.now)
            return
        hold = services.authorize(user=self.user, amount_micros=amount, now=self.now)
        self.sweep()
        self.holds[hold.pk] = self.take_in_burn_order(amount, field="held")
        self.journals[hold.pk] = {"heard": self.now, "delivered": 0, "tokens": 0, "amount": amount}

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), fraction=st.floats(0, 1))
    def capture(self, data, fraction):
        hold_id = data.draw(st.sampled_from(sorted(self.holds, key=str)))
        allocations = self.holds.pop(hold_id)
        self.journals.pop(hold_id)
        reserved = sum(allocations.values())
        charge = int(reserved * fraction)  # only the test picks amounts with a float
        services.capture(hold=hold_id, amount_micros=charge, now=self.now)
        self.settle(allocations, charge)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data):
        hold_id = data.draw(st.sampled_from(sorted(self.holds, key=str)))
        services.release(hold=hold_id, now=self.now)
        self.journals.pop(hold_id)
        self.settle(self.holds.pop(hold_id), 0)

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), worth=st.floats(0, 1.5), tokens=st.integers(1, 40))
    def call_journals_progress(self, data, worth, tokens):
        """A call in flight reports how far it got (what it says may exceed its hold)."""
        hold_id = data.draw(st.sampled_from(sorted(self.holds, key=str)))
        journal = self.journals[hold_id]
        delivered = int(journal["amount"] * worth)
        journal["tokens"] += tokens
        assert services.record_progress(hold=hold_id, delivered_micros=delivered,
                                        tokens=journal["tokens"], now=self.now)
        journal.update(heard=self.now, delivered=delivered)

    @rule(age=st.integers(0, 120))
    def stale_hold_sweep(self, age):
        """Only holds whose journal (or creation) is older than `age` are settled, each
        captured for what its journal says, never more than the hold."""
        cutoff = self.now - dt.timedelta(seconds=age)
        silent = {h: j for h, j in self.journals.items() if j["heard"] < cutoff}
        result = services.release_stale_holds(older_than_seconds=age, now=self.now)
        assert result.failed == ()
        expected = {h: min(j["delivered"], j["amount"]) for h, j in silent.items()}
        # (Earlier examples' users left holds behind; the sweep settles theirs too.)
        mine = {s.hold_id: s.captured_micros for s in result.settled if s.user_id == self.user.pk}
        assert mine == expected
        for hold_id, charge in expected.items():
            self.journals.pop(hold_id)
            self.settle(self.holds.pop(hold_id), charge)
        live = CreditHold.objects.filter(pk__in=list(self.holds), status=HoldStatus.ACTIVE)
        assert live.count() == len(self.holds)

    @precondition(lambda self: any(not g["voided"] for g in self.grants.values()))
    @rule(data=st.data())
    def void(self, data):
        grant_id = data.draw(st.sampled_from(sorted(k for k, g in self.grants.items() if not g["voided"])))
        services.void_grant(grant=grant_id, reason="test", now=self.now)
        grant = self.grants[grant_id]
        grant["voided"] = True
        grant["remaining"] = grant["held"]

    @precondition(lambda self: self.grants)
    @rule(data=st.data(), amount=amounts)
    def take_back(self, data, amount):
        """A refund, often while calls in flight hold the grant's credit."""
        grant_id = data.draw(st.sampled_from(sorted(self.grants)))
        grant = self.grants[grant_id]
        key = f"refund-{len(self.take_backs)}"
        result = services.take_back_credit(grant=grant_id, amount_micros=amount, reason="refund",
                                           idempotency_key=key, now=self.now)
        taken = min(amount, grant["remaining"] - grant["held"])
        owed = min(amount - taken, grant["held"] - grant["pending"])
        assert (result.taken_micros, result.pending_micros, result.shortfall_micros) == (
            taken, owed, amount - taken - owed)
        grant["remaining"] -= taken
        grant["pending"] += owed
        self.take_backs[key] = {"grant": grant_id, "taken": taken, "pending": owed,
                                "shortfall": amount - taken - owed}
        replay = services.take_back_credit(grant=grant_id, amount_micros=amount, reason="refund",
                                           idempotency_key=key, now=self.now)
        assert replay == result
    # --- staff actions (APPROVAL_THRESHOLD below: above it a second person must approve) ---
    @rule(amount=amounts, by=st.integers(0, 1))
    def staff_grant(self, amount, by):
        action = staff_actions.grant_credit(staff=self.staff[by], user=self.user,
                                            amount_micros=amount, reason="stateful", now=self.now)
        if action.status == StaffActionStatus.PENDING:
            assert amount > APPROVAL_THRESHOLD_MICROS
            self.pending[action.pk] = amount
        else:
            assert amount <= APPROVAL_THRESHOLD_MICROS
            self.staff_granted(action, amount)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), approve=st.booleans())
    def staff_decide(self, data, approve):
        action_id = data.draw(st.sampled_from(sorted(self.pending)))
        requester = StaffAction.objects.get(pk=action_id).requested_by
        other = next(s for s in self.staff if s != requester)
        with pytest.raises(ActionNotAllowed):
            staff_actions.approve(action=action_id, staff=requester, now=self.now)
        amount = self.pending.pop(action_id)
        self.decided.add(action_id)
        if approve:
            action = staff_actions.approve(action=action_id, staff=other, now=self.now)
            self.staff_granted(action, amount)
        else:
            staff_actions.reject(action=action_id, staff=other, note="no", now=self.now)

    @precondition(lambda self: self.decided)
    @rule(data=st.data())
    def staff_decide_again(self, data):
        action_id = data.draw(st.sampled_from(sorted(self.decided)))
        for staff in self.staff:
            with pytest.raises(ActionNotAllowed, match="already"):
                staff_actions.approve(action=action_id, staff=staff, now=self.now)

    def staff_granted(self, action, amount):
        self.grants[action.grant.pk] = {"remaining": amount, "held": 0, "expires_at": None,
                                        "granted_at": self.now, "voided": False, "pending": 0}

    @rule()
    def expire(self):
        services.expire_credits(now=self.now)
        self.sweep()

    @rule()
    def someone_loads_the_user(self):
        """A form, the admin or a password reset reads the user row..."""
        self.stale_copy = User.objects.get(pk=self.user.pk)

    @precondition(lambda self: getattr(self, "stale_copy", None) is not None)
    @rule()
    def and_saves_it_later_in_full(self):
        """...and saves every field of it after the ledger moved on: the books don't care."""
        self.stale_copy.first_name = "Stale"
        self.stale_copy.save()

    @rule(seconds=st.integers(1, 90))
    def tick(self, seconds):
        self.now += dt.timedelta(seconds=seconds)

    # --- helpers for the model --------------------------------------------------------
    def take_in_burn_order(self, amount: int, *, field: str) -> dict[int, int]:
        taken: dict[int, int] = {}
        for grant_id, grant in self.burn_order():
            if amount == 0:
                break
            if not self.usable(grant):
                continue
            take = min(grant["remaining"] - grant["held"], amount)
            if take <= 0:
                continue
            grant[field] += take if field == "held" else -take
            taken[grant_id] = take
            amount -= take
        return taken

    def settle(self, allocations: dict[int, int], charge: int) -> None:
        for grant_id, grant in self.burn_order():
            if grant_id not in allocations:
                continue
            reserved = allocations[grant_id]
            take = min(reserved, charge)
            charge -= take
            grant["held"] -= reserved
            grant["remaining"] -= take
            released = reserved - take
            owed = [t for t in self.take_backs.values() if t["grant"] == grant_id and t["pending"]]
            for take_back in owed:  # oldest first: what the call released is taken back
                part = min(take_back["pending"], released)
                take_back["pending"] -= part
                take_back["taken"] += part
                grant["pending"] -= part
                grant["remaining"] -= part
                released -= part
            spent = grant["pending"] - grant["held"]  # owed beyond what is still held: spent
            for take_back in owed:
                part = min(take_back["pending"], max(spent, 0))
                take_back["pending"] -= part
                take_back["shortfall"] += part
                grant["pending"] -= part
                spent -= part
            if not self.usable(grant):
                grant["remaining"] -= released

    # --- invariants ---------------------------------------------------------------
    @invariant()
    def books_match_the_model_and_each_other(self):
        if not hasattr(self, "user"):
            return
        self.user.refresh_from_db()
        rows = {g.pk: (g.remaining_micros, g.held_micros, g.pending_take_back_micros)
                for g in CreditGrant.objects.filter(user=self.user)}
        assert rows == {k: (g["remaining"], g["held"], g["pending"]) for k, g in self.grants.items()}
        take_backs = {t.idempotency_key: {"grant": t.grant_id, "taken": t.taken_micros,
                                          "pending": t.pending_micros, "shortfall": t.shortfall_micros}
                      for t in TakeBack.objects.filter(user=self.user)}
        assert take_backs == self.take_backs
        assert self.user.credit_balance == sum(g["remaining"] for g in self.grants.values())
        assert 0 <= self.user.credit_held <= self.user.credit_balance
        assert services.verify_balances(user_ids=[self.user.pk]) == []
        actions = StaffAction.objects.filter(user=self.user).select_related("decision")
        assert {a.pk for a in actions if a.status == StaffActionStatus.PENDING} == set(self.pending)


@pytest.mark.django_db
def test_random_ledger_histories_keep_every_invariant():
    LedgerMachine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    with override_settings(ADMIN_APPROVAL_THRESHOLD_USD="2.5"):
        LedgerMachine.TestCase().runTest()
