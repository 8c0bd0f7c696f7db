"""credits_verify (credits.services.reconcile): the books are checked against the cached totals."""

import pytest
from django.core.management import call_command

from tests.books import USD


def test_credits_verify_reports_a_tampered_balance(user, fund, capsys):
    fund(user, 3)
    call_command("credits_verify")
    assert "verified" in capsys.readouterr().out
    type(user).objects.filter(pk=user.pk).update(credit_balance=2 * USD)
    with pytest.raises(Exception, match="mismatch"):
        call_command("credits_verify")
    assert "balance vs sum of entries" in capsys.readouterr().err
