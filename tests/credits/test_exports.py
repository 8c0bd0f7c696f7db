"""credits.exports: CSV cells a spreadsheet would run as formulas are quoted; numbers stay numbers."""

import io

import pytest

from credits.exports import csv_writer, spreadsheet_safe


@pytest.mark.parametrize(("cell", "written"), [
    ("=cmd|'/Ccalc'!A0@example.com", "'=cmd|'/Ccalc'!A0@example.com"),
    ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(1+9)*cmd|' /C calc'!A0", "'@SUM(1+9)*cmd|' /C calc'!A0"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("-$0.000135", "'-$0.000135"),
])
def test_cells_that_start_like_a_formula_are_quoted(cell, written):
    assert spreadsheet_safe(cell) == written


@pytest.mark.parametrize("cell", ["-1.000000", "+2.5", "-0.000125", "10.000000", "-7", "0"])
def test_plain_numbers_and_amounts_stay_numbers(cell):
    assert spreadsheet_safe(cell) == cell


@pytest.mark.parametrize(("value", "written"), [
    (None, ""), (-5, "-5"), (42, "42"), ("a=b", "a=b"), ("lin@example.com", "lin@example.com"),
])
def test_other_cells_are_written_as_they_are(value, written):
    assert spreadsheet_safe(value) == written


def test_the_writer_quotes_each_cell_of_a_row():
    out = io.StringIO()
    csv_writer(out).writerow(["=1+1", "-1.000000", 3, None])
    assert out.getvalue() == "'=1+1,-1.000000,3,\r\n"
