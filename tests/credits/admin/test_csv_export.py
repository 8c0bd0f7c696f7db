"""The console's CSV export: a sign-up named like a formula comes out inert."""

import csv
import io

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import User
from credits import services
from credits.models import LedgerEntry

FORMULA_EMAIL = "=cmd|'/Ccalc'!A0@example.com"

pytestmark = pytest.mark.django_db


def _export(client, model: str, ids) -> list[dict]:
    response = client.post(reverse(f"admin:credits_{model}_changelist"),
                           {"action": "export_as_csv", "_selected_action": list(ids)})
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_a_formula_named_sign_up_is_inert_in_the_ledger_export(client, make_staff, fund, settings):
    settings.REGISTER_RATE_LIMIT_PER_HOUR = 0
    signed_up = APIClient().post("/api/auth/register",
                                 {"email": FORMULA_EMAIL, "password": "a-long-passphrase-42"},
                                 format="json")
    assert signed_up.status_code == 201, signed_up.content
    user = User.objects.get(pk=signed_up.json()["user"]["id"])
    assert user.email.startswith("=cmd|")  # stored as typed (lowercased)
    fund(user, 2)
    services.use_credits(user=user, amount_micros=1_000_000, description="=HYPERLINK(\"x\")")
    client.force_login(make_staff("root@tokenbank.test", superuser=True))

    rows = _export(client, "ledgerentry", LedgerEntry.objects.filter(user=user)
                   .values_list("pk", flat=True))
    assert rows and {r["user"] for r in rows} == {"'" + user.email}
    assert not any(value.startswith(("=", "+", "@")) for r in rows for value in r.values())
    # Negative amounts stay plain numbers a spreadsheet can sum.
    assert "-1.000000" in {r["amount_usd"] for r in rows}

