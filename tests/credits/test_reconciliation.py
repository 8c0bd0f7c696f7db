"""The books, every night (credits.reconciliation, the beat task credits.tasks.reconcile_books):
every account checked in batches, the run recorded, staff told once per new mismatch, no
money changed."""

import pytest
from django.core import mail
from django.db import connection
from django.db.utils import InternalError
from django.urls import reverse

from credits import reconciliation, services, tasks
from credits.models import CreditAccount, LedgerEntry, LedgerMismatch, ReconciliationRun
from tests.books import USD
from tests.config.scrape import samples as _samples
from tests.config.scrape import value as _value


def plant_drift(user, micros: int = 250_000) -> None:
    """A cached balance that no longer matches the ledger (a bug elsewhere, a manual edit):
    two of credits_verify's checks fail (the entries' sum and the grants' remaining)."""
    CreditAccount.objects.filter(user_id=user.pk).update(balance_micros=user.credit_balance + micros)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_nightly_reconciliation_finds_a_planted_mismatch_and_reports_it_once(
        make_user, fund, finance, settings, client):
    settings.RECONCILIATION_BATCH_SIZE = 2  # several batches, each its own snapshot
    users = [make_user() for _ in range(5)]
    for u in users:
        fund(u, 3)
    services.authorize(user=users[0], amount_micros=USD, reference="call-in-flight")
    victim = users[3]
    plant_drift(victim)
    entries_before = LedgerEntry.objects.count()
    balance_before = CreditAccount.objects.get(user_id=victim.pk).balance_micros

    assert tasks.reconcile_books() == 2  # the beat task's door

    run = ReconciliationRun.objects.get()
    assert run.finished_at is not None and run.error == ""
    assert (run.accounts_checked, run.mismatches, run.new_mismatches) == (6, 2, 2)  # + finance
    assert f"user {victim.pk}: balance vs sum of entries" in run.report
    assert {(m.user_id, m.resolved_at) for m in LedgerMismatch.objects.all()} == {(victim.pk, None)}
    assert not LedgerMismatch.objects.filter(reported_at__isnull=True).exists()
    assert len(mail.outbox) == 1
    assert finance.email in mail.outbox[0].to
    assert f"user {victim.pk}: balance vs sum of entries" in mail.outbox[0].body
    assert "Nothing was changed" in mail.outbox[0].body

    # The next night finds it again: recorded again, nobody is told twice.
    assert tasks.reconcile_books() == 2
    latest = ReconciliationRun.objects.order_by("-started_at", "-id").first()
    assert (latest.mismatches, latest.new_mismatches) == (2, 0)
    assert LedgerMismatch.objects.count() == 2
    assert len(mail.outbox) == 1

    # It never changed money: the drift stands until a person corrects it.
    assert LedgerEntry.objects.count() == entries_before
    assert CreditAccount.objects.get(user_id=victim.pk).balance_micros == balance_before

    # The count is a metric (read from the last run, whichever process scrapes).
    scraped = _samples(client.get("/metrics").content.decode())
    assert _value(scraped, "tokenbank_ledger_mismatches") == 2
    assert _value(scraped, "tokenbank_holds_active") == 1
    assert _value(scraped, "tokenbank_held_micros") == USD

    # Corrected: the next run closes it; the books balance; the gauge says 0.
    CreditAccount.objects.filter(user_id=victim.pk).update(balance_micros=3 * USD)
    assert tasks.reconcile_books() == 0
    assert not LedgerMismatch.objects.filter(resolved_at__isnull=True).exists()
    assert _value(_samples(client.get("/metrics").content.decode()),
                  "tokenbank_ledger_mismatches") == 0

    # Found again later, it is new again: staff are told.
    plant_drift(victim, 1)
    assert tasks.reconcile_books() == 2
    assert LedgerMismatch.objects.filter(resolved_at__isnull=True).count() == 2
    assert len(mail.outbox) == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_check_that_tried_to_change_money_would_be_refused(make_user, fund, monkeypatch):
    """Each batch reads inside a read-only snapshot: PostgreSQL refuses any write there."""
    user = make_user()
    fund(user, 1)

    def meddling_check(*, user_ids):
        CreditAccount.objects.filter(user_id__in=user_ids).update(balance_micros=0)
        return []

    monkeypatch.setattr(reconciliation, "verify_balances", meddling_check)
    with pytest.raises(InternalError, match="read-only transaction"):
        reconciliation.reconcile_books()
    assert CreditAccount.objects.get(user_id=user.pk).balance_micros == USD
    run = ReconciliationRun.objects.get()
    assert "read-only transaction" in run.error and run.finished_at is not None
    assert not LedgerMismatch.objects.exists()
    assert connection.vendor == "postgresql"


@pytest.mark.django_db
def test_the_other_apps_books_are_checked_too(make_user, fund, settings, finance):
    settings.LEDGER_RECONCILERS = ["tests.credits.test_reconciliation.one_purchase_mismatch"]
    fund(make_user(), 1)
    run = reconciliation.reconcile_books()
    assert (run.mismatches, run.new_mismatches) == (1, 1)
    mismatch = LedgerMismatch.objects.get()
    assert mismatch.key == "user 42: purchase p-1 has no grant"
    assert mismatch.user_id == 42
    assert len(mail.outbox) == 1


def one_purchase_mismatch() -> list[str]:
    return ["user 42: purchase p-1 has no grant"]


@pytest.mark.django_db
def test_staff_read_the_runs_and_mismatches_in_the_admin_and_cannot_edit_them(
        client, finance, make_user, fund):
    victim = make_user()
    fund(victim, 1)
    plant_drift(victim)
    reconciliation.reconcile_books()
    client.force_login(finance)
    runs = client.get(reverse("admin:credits_reconciliationrun_changelist"))
    assert runs.status_code == 200
    mismatches = client.get(reverse("admin:credits_ledgermismatch_changelist"))
    assert mismatches.status_code == 200
    assert f"user {victim.pk}: balance vs sum of entries" in mismatches.content.decode()
    run = ReconciliationRun.objects.get()
    detail = client.get(reverse("admin:credits_reconciliationrun_change", args=[run.pk]))
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content  # read-only
    assert client.get(reverse("admin:credits_reconciliationrun_add")).status_code == 403
    assert client.post(reverse("admin:credits_ledgermismatch_delete",
                               args=[LedgerMismatch.objects.first().pk]),
                       {"post": "yes"}).status_code == 403
    assert LedgerMismatch.objects.count() == 2


@pytest.mark.django_db
def test_the_command_runs_one_now_and_fails_on_a_mismatch(make_user, fund):
    from django.core.management import CommandError, call_command

    victim = make_user()
    fund(victim, 1)
    call_command("reconcile_books")
    plant_drift(victim)
    with pytest.raises(CommandError, match="2 ledger mismatch"):
        call_command("reconcile_books", batch_size=1)
    assert ReconciliationRun.objects.count() == 2
