"""Server-side SVG geometry for the usage chart (no JavaScript charting library)."""

from __future__ import annotations

from dataclasses import dataclass

from billing.selectors import DailySpend
from credits import money

# Colour-blind-friendly palette (Okabe-Ito, darkened for contrast on white).
PALETTE = ["#4338ca", "#0f766e", "#b45309", "#be185d", "#0369a1", "#4d7c0f", "#6d28d9"]

WIDTH, HEIGHT = 720, 240
PHONE_WIDTH, PHONE_HEIGHT = 360, 200  # drawn for a ~350 px screen, so its text is not shrunk
PHONE_CHAR_WIDTH = 8  # the phone chart's 13px labels
PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 8, 12, 28
CHAR_WIDTH = 7  # px per character of an 11px axis label, generously
CENT = 10_000


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str
    anchor: str = "middle"


@dataclass(frozen=True)
class SpendChart:
    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[tuple[str, str, str]]  # model, colour, total for people
    plot_left: int
    plot_right: int
    empty: bool
    summary: str
    period: str = "the last 30 days"

    @property
    def empty_text(self) -> str:
        return f"No spend in {self.period} yet." if self.period.startswith("the last") \
            else f"No spend {self.period}."

    @property
    def center_x(self) -> int:
        return (self.plot_left + self.plot_right) // 2

    @property
    def center_y(self) -> int:
        return (PAD_TOP + self.height - PAD_BOTTOM) // 2


def _nice_ceiling(value: int) -> int:
    """The smallest 1/2/5 x 10^n at or above `value` (value > 0), in micros."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def y_axis(peak_micros: int, max_ticks: int = 4) -> tuple[int, list[str]]:
    """The axis top and its labels: a 1/2/5 step, whole cents once the peak reaches a cent,
    and every label with the same decimals (as few as the step needs)."""
    if peak_micros <= 0:
        peak_micros = 1_000_000  # an empty chart reads $0.00 .. $1.00
    step = _nice_ceiling(-(-peak_micros // max_ticks))
    if peak_micros >= CENT:
        step = max(step, CENT)
    ticks = -(-peak_micros // step)
    places = max(2, len(f"{step % money.MICROS_PER_USD:06d}".rstrip("0")))
    return step * ticks, [money.display_usd(step * k, places=places) for k in range(ticks + 1)]


def spend_chart(spend: DailySpend, *, width: int = WIDTH, height: int = HEIGHT,
                max_ticks: int = 4, char_width: int = CHAR_WIDTH, day_step: int = 7,
                period: str = "") -> SpendChart:
    """The chart drawn `width` x `height` (the phone variant is narrower, with fewer ticks and
    larger text: `char_width` is the px per character its axis labels need; a date under every
    `day_step`th day, counted back from today; `period` names the days for people, "the last
    30 days" unless given)."""
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(spend.models)}
    day_totals = [sum(spend.micros.get((d, m), 0) for m in spend.models) for d in spend.days]
    top, y_labels = y_axis(max(day_totals, default=0), max_ticks)
    pad_left = 12 + char_width * max(len(label) for label in y_labels)
    plot_w = width - pad_left - PAD_RIGHT
    plot_h = height - PAD_TOP - PAD_BOTTOM
    n = len(spend.days)
    period = period or f"the last {n} days"
    slot = plot_w / n
    bar_w = max(2.0, slot * 0.7)

    bars: list[Bar] = []
    for i, day in enumerate(spend.days):
        base_y = PAD_TOP + plot_h
        x = pad_left + i * slot + (slot - bar_w) / 2
        for model in spend.models:  # biggest spender at the bottom, as first in the legend
            amount = spend.micros.get((day, model), 0)
            if not amount:
                continue
            h = plot_h * amount / top
            base_y -= h
            bars.append(Bar(
                x=round(x, 2), y=round(base_y, 2), width=round(bar_w, 2), height=round(max(h, 1), 2),
                color=colors[model],
                title=f"{day:%b %-d}: {model} {money.display_usd(amount)}",
            ))
    last = len(y_labels) - 1
    y_ticks = [Tick(pos=round(PAD_TOP + plot_h * (1 - k / last), 2), label=label)
               for k, label in enumerate(y_labels)]
    x_ticks = []
    for i, day in enumerate(spend.days):
        if i % day_step != (n - 1) % day_step:
            continue
        label, pos = f"{day:%b %-d}", pad_left + i * slot + slot / 2
        half = char_width * len(label) / 2
        if pos + half > width:  # today's label would be cut off at the right edge
            x_ticks.append(Tick(pos=width - 2, label=label, anchor="end"))
        elif pos - half < 0:
            x_ticks.append(Tick(pos=2, label=label, anchor="start"))
        else:
            x_ticks.append(Tick(pos=round(pos, 2), label=label))
    legend = [
        (m, colors[m], money.display_usd(sum(spend.micros.get((d, m), 0) for d in spend.days)))
        for m in spend.models
    ]
    summary = (
        f"Spend per day for {period}: {money.display_usd(spend.total_micros)}"
        " in total"
        + ("" if not legend else ", " + ", ".join(f"{m} {t}" for m, _c, t in legend))
        + "."
    )
    return SpendChart(
        width=width, height=height, bars=bars, y_ticks=y_ticks, x_ticks=x_ticks, legend=legend,
        plot_left=pad_left, plot_right=width - PAD_RIGHT, empty=spend.total_micros == 0,
        summary=summary, period=period,
    )
