"""The price of a call, by the one rounding rule of `credits.money`."""

from __future__ import annotations

from credits import money
from credits.exceptions import InvalidAmount


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


