"""The price of a call, by the one rounding rule of `credits.money`."""

from __future__ import annotations

from credits import money
from credits.exceptions import InvalidAmount
from credits.money import CallCost, TokenCounts, TokenPrices


def calculate_inference_cost(
    *,
    input_tokens: int,
    output_tokens: int,
    input_price_per_million_micros: int,
    output_price_per_million_micros: int,
) -> int:
    """Micro-dollars for one call; see `credits.money` for the one rounding rule."""
    try:
        return money.cost_micros(
            input_tokens=input_tokens, output_tokens=output_tokens,
            input_price_per_million_micros=input_price_per_million_micros,
            output_price_per_million_micros=output_price_per_million_micros,
        )
    except ValueError as exc:
        raise InvalidAmount(str(exc)) from exc


def price_call(*, tokens: TokenCounts, prices: TokenPrices) -> CallCost:
    """A call's charge with every token class at its price, rounded once (up), and the
    split by class that adds up to it. Raises InvalidAmount for negative or non-integer
    counts or prices."""
    try:
        return money.call_cost(tokens=tokens, prices=prices)
    except ValueError as exc:
        raise InvalidAmount(str(exc)) from exc


def worst_case_cost(*, prompt_tokens: int, output_tokens: int, prices: TokenPrices) -> int:
    """The most a call of `prompt_tokens` and up to `output_tokens` can cost, whatever the
    upstream reports: every prompt token in the dearest input class, every output token in
    the dearer of output and reasoning. What a hold must cover."""
    dearest_input = max(prices.input, prices.cached_input, prices.cache_write)
    dearest_output = max(prices.output, prices.reasoning)
    return price_call(
        tokens=TokenCounts(input=prompt_tokens, output=output_tokens),
        prices=TokenPrices(input=dearest_input, cached_input=0, cache_write=0,
                           output=dearest_output, reasoning=0),
    ).total_micros
