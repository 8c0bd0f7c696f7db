"""Server-rendered SVG bar charts for the console (no JavaScript, no CDN): the geometry is
computed here and drawn by templates/admin/credits/daily_chart.html.

billing has its own chart for customers (billing.charts); credits may not import billing, so
the console's daily charts live here, in the admin layer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PAD_LEFT_MIN, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 36, 8, 10, 24
CHAR_WIDTH = 7  # px per character of an 11px label, generously


@dataclass(frozen=True)
class Series:
    label: str
    css: str  # the bar's class (its colour comes from the page's stylesheet)
    values: Sequence[int]


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class DailyChart:
    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[tuple[str, str, str]]  # label, css class, total
    plot_left: int
    plot_right: int
    plot_bottom: int
    summary: str  # the chart in words, for screen readers
    empty: bool


def nice_ceiling(value: int) -> int:
    """The smallest 1/2/5 x 10^n at or above `value` (at least 1)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= max(value, 1):
                return step * m
        step *= 10


def daily_bars(days: Sequence[dt.date], series: Sequence[Series], *,
               fmt: Callable[[int], str] = str, title: str = "",
               width: int = 900, height: int = 220, ticks: int = 4,
               min_top: int = 1) -> DailyChart:
    """Side-by-side bars, one group per day, one bar per series; the y axis from 0 to a
    1/2/5 step at or above the highest value (at least `min_top`: an empty money chart reads
    $0 to $1, not $0 to a micro-dollar)."""
    peak = max([v for s in series for v in s.values] + [0])
    top = nice_ceiling(max(peak, min_top))
    # Integers only: a step that does not divide the top leaves a tick out.
    y_values = [top * i // ticks for i in range(ticks + 1) if top * i % ticks == 0]
    labels = [fmt(v) for v in y_values]
    left = max(PAD_LEFT_MIN, CHAR_WIDTH * max(len(label) for label in labels) + 8)
    right, bottom = width - PAD_RIGHT, height - PAD_BOTTOM
    plot_h = bottom - PAD_TOP
    slot = (right - left) / max(len(days), 1)
    bar_w = max(1.0, (slot * 0.8) / max(len(series), 1))

    def y_of(value: int) -> float:
        return bottom - plot_h * value / top

    bars = []
    for i, day in enumerate(days):
        for j, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            x = left + slot * i + slot * 0.1 + bar_w * j
            bars.append(Bar(x=round(x, 2), y=round(y_of(value), 2), width=round(bar_w, 2),
                            height=round(bottom - y_of(value), 2), css=s.css,
                            title=f"{day:%b %-d}: {fmt(value)} {s.label.lower()}"))
    # Day labels: about one every 70 px, always the first and the last.
    every = max(1, round(70 / slot)) if slot else 1
    x_ticks = [Tick(pos=round(left + slot * (i + 0.5), 2), label=f"{d:%b %-d}")
               for i, d in enumerate(days) if i % every == 0 or i == len(days) - 1]
    if len(x_ticks) > 1 and x_ticks[-1].pos - x_ticks[-2].pos < 60:
        del x_ticks[-2]
    legend = [(s.label, s.css, fmt(sum(s.values))) for s in series]
    words = "; ".join(f"{label}: {total} in all" for label, _, total in legend)
    return DailyChart(
        width=width, height=height, bars=bars,
        y_ticks=[Tick(pos=round(y_of(v), 2), label=label) for v, label in zip(y_values, labels, strict=True)],
        x_ticks=x_ticks, legend=legend, plot_left=left, plot_right=right, plot_bottom=bottom,
        summary=f"{title} from {days[0]:%b %-d} to {days[-1]:%b %-d}: {words}." if days else "",
        empty=peak == 0)
