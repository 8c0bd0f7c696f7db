"""Server-side SVG geometry for the usage chart (no JavaScript charting library)."""

from __future__ import annotations

from dataclasses import dataclass

from billing.selectors import DailySpend
from credits import money

# Colour-blind-friendly palette (Okabe-Ito, darkened for contrast on white).
PALETTE = ["#4338ca", "#0f766e", "#b45309", "#be185d", "#0369a1", "#4d7c0f", "#6d28d9"]

WIDTH, HEIGHT = 720, 240
PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 8, 12, 28
CHAR_WIDTH = 7  # px per character of an 11px axis label, generously


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


def spend_chart(spend: DailySpend) -> SpendChart:
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(spend.models)}
    day_totals = [sum(spend.micros.get((d, m), 0) for m in spend.models) for d in spend.days]
    top = _nice_ceiling(max(day_totals)) if any(day_totals) else 1_000_000
    places = 2 if top >= 100_000 else 4 if top >= 1_000 else 6
    y_labels = [money.display_usd(top * k // 4, places=places) for k in range(5)]
    pad_left = 12 + CHAR_WIDTH * max(len(label) for label in y_labels)
    plot_w = WIDTH - pad_left - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    n = len(spend.days)
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
                title=f"{day:%b %-d}: {model} {money.display_usd(amount, places=places)}",
            ))
    y_ticks = [Tick(pos=round(PAD_TOP + plot_h * (1 - k / 4), 2), label=y_labels[k])
               for k in range(5)]
    x_ticks = [
        Tick(pos=round(pad_left + i * slot + slot / 2, 2), label=f"{day:%b %-d}")
        for i, day in enumerate(spend.days)
        if i % 7 == (n - 1) % 7
    ]
    legend = [
        (m, colors[m], money.display_usd(sum(spend.micros.get((d, m), 0) for d in spend.days),
                                         places=places))
        for m in spend.models
    ]
    summary = (
        f"Spend per day for the last {n} days: {money.display_usd(spend.total_micros, places=places)}"
        " in total"
        + ("" if not legend else ", " + ", ".join(f"{m} {t}" for m, _c, t in legend))
        + "."
    )
    return SpendChart(
        width=WIDTH, height=HEIGHT, bars=bars, y_ticks=y_ticks, x_ticks=x_ticks, legend=legend,
        plot_left=pad_left, plot_right=WIDTH - PAD_RIGHT, empty=spend.total_micros == 0,
        summary=summary,
    )
