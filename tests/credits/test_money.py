from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits.money import cost_micros, display_usd, format_usd, usd_to_micros


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0.000000"), (1, "0.000001"), (19_999_874, "19.999874"), (20_000_000, "20.000000"),
     (-1_500_000, "-1.500000"), (123_456_789_012, "123456.789012")],
)
def test_usd_strings_always_have_six_decimals(micros, text):
    assert format_usd(micros) == text


@pytest.mark.parametrize(("text", "micros"), [("20", 20_000_000), ("0.000125", 125),
                                               (Decimal("1.5"), 1_500_000), (3, 3_000_000)])
def test_usd_amounts_parse_exactly(text, micros):
    assert usd_to_micros(text) == micros


@pytest.mark.parametrize("bad", [0.1, "0.0000001", "abc", "NaN", "Infinity", None, True])
def test_inexact_or_malformed_usd_amounts_are_refused(bad):
    with pytest.raises(ValueError):
        usd_to_micros(bad)


def test_format_refuses_floats():
    with pytest.raises(TypeError):
        format_usd(1.0)


def test_cost_rounds_once_per_call_up_to_the_next_micro_dollar():
    # 7 input tokens at $0.15/M = 1.05 micros, 3 output at $0.60/M = 1.8 micros -> 2.85 -> 3
    assert cost_micros(input_tokens=7, output_tokens=3, input_price_per_million_micros=150_000,
                       output_price_per_million_micros=600_000) == 3
    # Exact amounts are not rounded up.
    assert cost_micros(input_tokens=1_000_000, output_tokens=0,
                       input_price_per_million_micros=150_000,
                       output_price_per_million_micros=600_000) == 150_000
    assert cost_micros(input_tokens=0, output_tokens=0, input_price_per_million_micros=1,
                       output_price_per_million_micros=1) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_cost_refuses_non_integer_or_negative_inputs(bad):
    with pytest.raises(ValueError):
        cost_micros(input_tokens=bad, output_tokens=1, input_price_per_million_micros=1,
                    output_price_per_million_micros=1)


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**9), st.integers(0, 10**9))
def test_cost_is_the_exact_ceiling(input_tokens, output_tokens, input_price, output_price):
    exact = Decimal(input_tokens * input_price + output_tokens * output_price) / 10**6
    cost = cost_micros(input_tokens=input_tokens, output_tokens=output_tokens,
                       input_price_per_million_micros=input_price,
                       output_price_per_million_micros=output_price)
    assert cost - 1 < exact <= cost


@given(st.integers(-(10**15), 10**15))
def test_format_and_parse_round_trip(micros):
    assert usd_to_micros(format_usd(micros)) == micros


def test_display_is_for_people_only():
    # Exact, never rounded: whole cents in cents, anything finer with the decimals it needs.
    assert display_usd(20_000_000) == "$20.00"
    assert display_usd(19_999_989) == "$19.999989"
    assert display_usd(19_999_874) == "$19.999874"
    assert display_usd(2_459) == "$0.002459"
    assert display_usd(1) == "$0.000001"
    assert display_usd(1_500) == "$0.0015"
    assert display_usd(0) == "$0.00"
    assert display_usd(1_234_567_890) == "$1,234.56789"
    assert display_usd(1_234_560_000) == "$1,234.56"
    assert display_usd(-135) == "-$0.000135"
    assert display_usd(-2_500_000) == "-$2.50"
    # places is the fewest decimals: "$20" for a headline, cents again when there are any.
    assert display_usd(20_000_000, places=0) == "$20"
    assert display_usd(20_500_000, places=0) == "$20.50"
    assert display_usd(5, places=0) == "$0.000005"
