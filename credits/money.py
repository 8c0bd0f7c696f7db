"""The one module that owns money.

Amounts are integers of micro-dollars (1 USD = 1_000_000 micros) everywhere
else; they never pass through float. The single rounding rule of the product:

    cost of a call = ceil((input_tokens * input_price_per_million_micros
                           + output_tokens * output_price_per_million_micros) / 1_000_000)

i.e. one rounding per call, always up to the next whole micro-dollar, so a
call is never billed less than it cost and sub-micro prices never vanish.

With every token class (`call_cost`) the sum runs over the classes (input, cached input,
cache write, output, reasoning), still rounded once. The per-class breakdown shown to
customers splits that one total (largest remainder), so the parts always add up to it.
"""

from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per million tokens


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division for non-negative numerators (no float involved)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return -(-numerator // denominator)


def cost_micros(
    *,
    input_tokens: int,
    output_tokens: int,
    input_price_per_million_micros: int,
    output_price_per_million_micros: int,
) -> int:
    """The price of one call, rounded once, up, to a whole micro-dollar."""
    for name, value in (
        ("input_tokens", input_tokens),
        ("output_tokens", output_tokens),
        ("input_price_per_million_micros", input_price_per_million_micros),
        ("output_price_per_million_micros", output_price_per_million_micros),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    total = (
        input_tokens * input_price_per_million_micros
        + output_tokens * output_price_per_million_micros
    )
    return ceil_div(total, TOKENS_PER_PRICE_UNIT)


TOKEN_CLASSES = ("input", "cached_input", "cache_write", "output", "reasoning")


@dataclass(frozen=True)
class TokenCounts:
    """A call's tokens by class. `input` is the uncached prompt; `output` the completion
    without its reasoning tokens."""

    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class TokenPrices:
    """Micro-dollars per million tokens of each class."""

    input: int
    cached_input: int
    cache_write: int
    output: int
    reasoning: int


@dataclass(frozen=True)
class CallCost:
    """The charge of a call (`total_micros`) and its split by class (`by_class`, in
    TOKEN_CLASSES order), which adds up to the total exactly."""

    total_micros: int
    by_class: dict[str, int]


def call_cost(*, tokens: TokenCounts, prices: TokenPrices) -> CallCost:
    """Every class at its price, summed, rounded once, up (the module's rule)."""
    counts, rates = asdict(tokens), asdict(prices)
    exact = {}
    for name in TOKEN_CLASSES:
        for label, value in ((f"{name} tokens", counts[name]), (f"{name} price", rates[name])):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{label} must be a non-negative integer, got {value!r}")
        exact[name] = counts[name] * rates[name]
    total = ceil_div(sum(exact.values()), TOKENS_PER_PRICE_UNIT)
    by_class = {name: amount // TOKENS_PER_PRICE_UNIT for name, amount in exact.items()}
    # The rounding's micro-dollars go to the classes with the largest fractions, in order.
    short = total - sum(by_class.values())
    for name in sorted(TOKEN_CLASSES, key=lambda n: -(exact[n] % TOKENS_PER_PRICE_UNIT))[:short]:
        by_class[name] += 1
    return CallCost(total_micros=total, by_class=by_class)


def usd_to_micros(value: str | int | Decimal) -> int:
    """Parse a USD amount ("20", "0.000125", Decimal("1.5"), 3) exactly.

    Refuses floats (they are not exact) and anything finer than a micro-dollar.
    """
    if isinstance(value, bool | float):
        raise ValueError("USD amounts must be given as str, int or Decimal, never float")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"{value!r} is not a USD amount") from exc
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a USD amount")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"{value!r} has more than six decimal places")
    return int(micros)


def format_usd(micros: int) -> str:
    """Micro-dollars as a USD string with six decimals: 19999874 -> "19.999874"."""
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"micro-dollar amounts are integers, got {micros!r}")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def display_usd(micros: int, places: int = 2) -> str:
    """For people, exact: "$20.00" for whole cents, else the decimals needed, up to six
    ("$19.999989", "$0.002459"). Nothing is rounded away, so a spend always shows.

    `places` is the fewest decimals shown: 0 gives "$20" for whole dollars ("$20.50" otherwise).
    """
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"micro-dollar amounts are integers, got {micros!r}")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{frac:06d}"
    needed = len(digits.rstrip("0"))
    shown = places if needed <= places else max(needed, 2)
    return f"{sign}${whole:,}" + (f".{digits[:shown]}" if shown else "")


def headline_usd(micros: int) -> str:
    """For headlines (the balance hero, the nav chip, the celebration, alerts): dollars and
    cents rounded DOWN, so a figure never reads more than there is: 19_999_989 -> "$19.99",
    9_999 -> "$0.00". Rows and exports keep the exact micro-dollars (display_usd, format_usd)."""
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"micro-dollar amounts are integers, got {micros!r}")
    cents = micros // (MICROS_PER_USD // 100)  # floor: a debt of a micro reads "-$0.01"
    sign = "-" if cents < 0 else ""
    whole, cent = divmod(abs(cents), 100)
    return f"{sign}${whole:,}.{cent:02d}"
