"""CSV that is safe to open in a spreadsheet: every export (the customer's history CSV, the
console's "Export selected rows as CSV") writes its rows through `csv_writer`.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return may be run as a formula by
Excel, LibreOffice or Google Sheets (OWASP "CSV injection"): a sign-up named
`=cmd|'/Ccalc'!A0@example.com` would be a command in the staff's ledger export. Such a cell is
written with a leading single quote, which spreadsheets read as "this cell is text".

Plain decimal numbers are left alone: an amount like "-1.000000" or "+2.5" is only ever read as
a number (a bare number is not a formula, nothing can run), so money columns stay numbers a
spreadsheet can sum, exactly as `credits.money.format_usd` wrote them.
"""

from __future__ import annotations

import csv
import re
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def spreadsheet_safe(value: Any) -> str:
    """The cell as text, quoted with a leading `'` when a spreadsheet would read it as a formula."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


class SafeCsvWriter:
    """csv.writer whose rows go through spreadsheet_safe; writerow returns what the file's
    write returned (streaming responses yield it)."""

    def __init__(self, file, **fmtparams):
        self._writer = csv.writer(file, **fmtparams)

    def writerow(self, row):
        return self._writer.writerow([spreadsheet_safe(value) for value in row])


def csv_writer(file, **fmtparams) -> SafeCsvWriter:
    """The one way to write an export's CSV."""
    return SafeCsvWriter(file, **fmtparams)
