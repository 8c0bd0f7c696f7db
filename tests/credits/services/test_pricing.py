"""Every token class at its price, one rounding per call (credits.money's rule)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits.exceptions import InvalidAmount
from credits.money import TOKEN_CLASSES, TokenCounts, TokenPrices, cost_micros
from credits.services import price_call, worst_case_cost

PRICES = TokenPrices(input=1_000_000, cached_input=250_000, cache_write=1_250_000,
                     output=4_000_000, reasoning=8_000_000)


def test_each_class_is_charged_at_its_own_price():
    cost = price_call(tokens=TokenCounts(input=100, cached_input=400, cache_write=10, output=20,
                                         reasoning=30), prices=PRICES)
    # 100*1 + 400*0.25 + 10*1.25 + 20*4 + 30*8 = 100 + 100 + 12.5 + 80 + 240 = 532.5 -> 533
    assert cost.total_micros == 533
    assert cost.by_class == {"input": 100, "cached_input": 100, "cache_write": 13, "output": 80,
                             "reasoning": 240}


def test_one_rounding_per_call_not_one_per_class():
    # Three classes of half a micro-dollar each: 1.5 -> 2 once, where rounding each class
    # up would charge 3.
    prices = TokenPrices(input=500_000, cached_input=500_000, cache_write=500_000,
                         output=0, reasoning=0)
    cost = price_call(tokens=TokenCounts(input=1, cached_input=1, cache_write=1), prices=prices)
    assert cost.total_micros == 2
    assert sum(cost.by_class.values()) == 2


def test_plain_input_and_output_cost_what_they_always_cost():
    prices = TokenPrices(input=150_000, cached_input=150_000, cache_write=150_000,
                         output=600_000, reasoning=600_000)
    cost = price_call(tokens=TokenCounts(input=12, output=31), prices=prices)
    assert cost.total_micros == cost_micros(input_tokens=12, output_tokens=31,
                                            input_price_per_million_micros=150_000,
                                            output_price_per_million_micros=600_000)


@given(counts=st.tuples(*[st.integers(0, 10**7)] * 5),
       rates=st.tuples(*[st.integers(0, 10**9)] * 5))
def test_the_breakdown_always_adds_up_to_the_one_rounded_charge(counts, rates):
    tokens = TokenCounts(*counts)
    prices = TokenPrices(*rates)
    cost = price_call(tokens=tokens, prices=prices)
    exact = sum(c * r for c, r in zip(counts, rates, strict=True))
    assert cost.total_micros * 1_000_000 >= exact > (cost.total_micros - 1) * 1_000_000 or (
        exact == 0 and cost.total_micros == 0)
    assert sum(cost.by_class.values()) == cost.total_micros
    assert list(cost.by_class) == list(TOKEN_CLASSES)
    for (name, part), c, r in zip(cost.by_class.items(), counts, rates, strict=True):
        assert c * r // 1_000_000 <= part <= -(-c * r // 1_000_000), name


@given(prompt=st.integers(0, 10**6), output=st.integers(0, 10**6),
       split=st.tuples(*[st.floats(0, 1)] * 3), rates=st.tuples(*[st.integers(0, 10**8)] * 5))
def test_the_worst_case_covers_any_split_the_upstream_may_report(prompt, output, split, rates):
    prices = TokenPrices(*rates)
    cached = int(prompt * split[0])
    written = int((prompt - cached) * split[1])
    reasoning = int(output * split[2])
    actual = price_call(tokens=TokenCounts(input=prompt - cached - written, cached_input=cached,
                                           cache_write=written, output=output - reasoning,
                                           reasoning=reasoning), prices=prices)
    assert actual.total_micros <= worst_case_cost(prompt_tokens=prompt, output_tokens=output,
                                                  prices=prices)


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_bad_counts_or_prices_are_refused(bad):
    with pytest.raises(InvalidAmount):
        price_call(tokens=TokenCounts(reasoning=bad), prices=PRICES)
    with pytest.raises(InvalidAmount):
        price_call(tokens=TokenCounts(), prices=TokenPrices(1, 1, bad, 1, 1))
