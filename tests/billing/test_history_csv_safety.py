"""The customer's history CSV: formula-looking cells are quoted, amounts stay numbers."""

import csv
import io

import pytest
from django.urls import reverse

from credits import services

pytestmark = pytest.mark.django_db


def test_history_csv_quotes_formula_cells_and_keeps_amounts_numeric(signed_in, member, fund):
    fund(member, usd=10)
    services.use_credits(user=member, amount_micros=1_000_000, reference="@SUM(1+9)*cmd|' /C calc'!A0",
                         description="=HYPERLINK(\"http://evil.example\",\"click\")")
    response = signed_in.get(reverse("billing:history_csv"))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    usage = next(r for r in rows if r["type"] == "USAGE")
    assert usage["description"] == "'=HYPERLINK(\"http://evil.example\",\"click\")"
    assert usage["reference"] == "'@SUM(1+9)*cmd|' /C calc'!A0"
    assert usage["amount_usd"] == "-1.000000"  # a plain number: read as one, never run
    assert usage["balance_after_usd"] == "9.000000"
