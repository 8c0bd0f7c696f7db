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
from credits.models import CreditGrant, GrantKind, StaffAction, StaffActionStatus
from credits.staff_actions import ActionNotAllowed

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
APPROVAL_THRESHOLD_MICROS = 2_500_000
NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)
amounts = st.integers(min_value=1, max_value=5_000_000)


class LedgerMachine(RuleBasedStateMachine):
    """The model knows each grant's remaining/held and each hold's reservation per grant."""

    @initialize()
    def new_user(self):
        self.now = START
        # Registered long ago: no pending promotion to borrow against.
        self.user = User.objects.create_user(
            f"stateful-{User.objects.count()}@example.com", "pw", date_joined=START - dt.timedelta(days=1)
        )
        self.grants: dict[int, dict] = {}
        self.holds: dict = {}
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
        self.grants[grant.pk] = {"remaining": amount, "held": 0, "expires_at": expires_at,
                                 "granted_at": self.now, "voided": False}

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

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), fraction=st.floats(0, 1))
    def capture(self, data, fraction):
        hold_id = data.draw(st.sampled_from(sorted(self.holds, key=str)))
        allocations = self.holds.pop(hold_id)
        reserved = sum(allocations.values())
        charge = int(reserved * fraction)  # only the test picks amounts with a float
        services.capture(hold=hold_id, amount_micros=charge, now=self.now)
        self.settle(allocations, charge)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data):
        hold_id = data.draw(st.sampled_from(sorted(self.holds, key=str)))
        services.release(hold=hold_id, now=self.now)
        self.settle(self.holds.pop(hold_id), 0)

    @precondition(lambda self: any(not g["voided"] for g in self.grants.values()))
    @rule(data=st.data())
    def void(self, data):
        grant_id = data.draw(st.sampled_from(sorted(k for k, g in self.grants.items() if not g["voided"])))
        services.void_grant(grant=grant_id, reason="test", now=self.now)
        grant = self.grants[grant_id]
        grant["voided"] = True
        grant["remaining"] = grant["held"]

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
                                        "granted_at": self.now, "voided": False}

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
            if not self.usable(grant):
                grant["remaining"] -= reserved - take

    # --- invariants ---------------------------------------------------------------
    @invariant()
    def books_match_the_model_and_each_other(self):
        if not hasattr(self, "user"):
            return
        self.user.refresh_from_db()
        rows = {g.pk: (g.remaining_micros, g.held_micros)
                for g in CreditGrant.objects.filter(user=self.user)}
        assert rows == {k: (g["remaining"], g["held"]) for k, g in self.grants.items()}
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
