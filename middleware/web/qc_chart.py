"""The geometry of a Levey-Jennings chart: where each QC value, target line and time tick goes.

Pure: the control values of one series (instrument, test, level, lot), its target and the time
window come in, coordinates come out; the template draws them as inline SVG (the console's CSP
forbids scripts and inline styles, so the server does the drawing, AUTOVERIFICATION.md §3).

With a target the y axis is in SD units: the mean in the middle, ±1, ±2 and ±3 SD lines, and
room up to ±`Z_LIMIT` SD. A value beyond that is drawn on the edge and marked `offscale` (its
true value stays in the point's title): a 1-3s rejection at +9 SD must not flatten the rest of
the chart. Without a target (no line for this lot and level in the QC plan) the axis spans the
values themselves and no SD line is drawn: nothing can be judged.

The x axis is time, from the start to the end of the window, so gaps between runs show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

__all__ = [
    "Z_LIMIT",
    "Chart",
    "Line",
    "Mark",
    "QcValue",
    "Target",
    "Tick",
    "layout",
]

#: The y axis reaches this many SD each side of the mean.
Z_LIMIT = Decimal(4)

_WIDTH = 720
_HEIGHT = 260
# Room for the SD labels on the left, the values on the right, the time labels below.
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 64, 14, 30

# Tick steps, smallest first: the first that gives at most `_MAX_TICKS` ticks is used.
_STEPS = (
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(hours=6),
    timedelta(hours=12),
    timedelta(days=1),
    timedelta(days=2),
    timedelta(days=7),
    timedelta(days=14),
    timedelta(days=28),
    timedelta(days=91),
)
_MAX_TICKS = 8


@dataclass(frozen=True, slots=True)
class QcValue:
    """One control measurement as the Westgard rules judged it. `violations` use the QC plan's
    rule names (1-2s, 1-3s, 2-2s, R-4s, 4-1s, 10x, or no_target); `rejected`: a rejection
    rule (or no target) fired, `warning`: 1-2s only."""

    at: datetime
    value: Decimal
    z: Decimal | None = None
    violations: tuple[str, ...] = ()
    rejected: bool = False
    warning: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """The assigned mean and SD of the series' lot and level."""

    mean: Decimal
    sd: Decimal


@dataclass(frozen=True, slots=True)
class Line:
    """A horizontal line: the mean (`k` 0) or mean + k SD."""

    k: int
    y: float
    label: str  # "+2 SD"
    value: str  # the concentration it stands for

    @property
    def kind(self) -> str:
        return "mean" if self.k == 0 else f"sd{abs(self.k)}"


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Mark:
    """One QC value on the chart. `offscale` is -1/+1 when it was pulled to the edge."""

    x: float
    y: float
    point: QcValue
    state: Literal["ok", "warning", "rejected"]
    offscale: int
    label: str  # the rules it violated, "" if none
    title: str  # the hover text: time, value, z, rules
    label_y: float = 0.0  # where the label's baseline goes: above the point, or below it


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    lines: tuple[Line, ...]
    ticks: tuple[Tick, ...]
    marks: tuple[Mark, ...]
    path: str  # polyline points "x,y x,y ..." joining the values in time order
    has_target: bool

    @property
    def right(self) -> int:
        return self.left + self.plot_width

    @property
    def bottom(self) -> int:
        return self.top + self.plot_height


def _round(value: float) -> float:
    return round(value, 1)


def _signed(k: int) -> str:
    return "mean" if k == 0 else f"{k:+d} SD"


def _text(value: Decimal) -> str:
    # Decimal keeps the plan's own digits: 5.5 + 2 × 0.15 is "5.80", never 5.800000000001.
    return f"{value:f}"


def _ticks(start: datetime, end: datetime, left: int, width: int) -> tuple[Tick, ...]:
    span = end - start
    step = next((s for s in _STEPS if span / s <= _MAX_TICKS), _STEPS[-1])
    daily = step >= timedelta(days=1)
    # Ticks fall on whole hours or on midnight UTC, so the labels read as round times.
    moment = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if daily:
        moment = moment.replace(hour=0)
    while moment < start:
        moment += step
    ticks = []
    while moment <= end:
        x = left + (moment - start) / span * width
        label = moment.strftime("%m-%d") if daily else moment.strftime("%m-%d %H:%M")
        ticks.append(Tick(_round(x), label))
        moment += step
    return tuple(ticks)


def _state(point: QcValue) -> Literal["ok", "warning", "rejected"]:
    if point.rejected:
        return "rejected"
    return "warning" if point.warning or point.violations else "ok"


def _title(point: QcValue) -> str:
    parts = [point.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"), _text(point.value)]
    if point.z is not None:
        parts.append(f"z {point.z:+.2f}")
    if point.violations:
        parts.append(", ".join(point.violations))
    return " · ".join(parts)


# A label is about this wide per character and this tall, in SVG units (11 px text).
_CHAR, _LINE = 6.2, 12.0


def _place_labels(marks: list[Mark], middle: float, height: int) -> list[Mark]:
    """Each rule label above its point when the point is above the mean, below otherwise, and
    moved further out while it would overlap the label of an earlier point close by (runs of
    the same day sit a few pixels apart)."""
    placed: list[Mark] = []
    taken: list[tuple[float, float, float]] = []  # (x from, x to, baseline) of placed labels
    for mark in marks:
        if not mark.label:
            placed.append(mark)
            continue
        step = -_LINE if mark.y <= middle else _LINE
        baseline = mark.y - 6 if step < 0 else mark.y + 15
        start, end = mark.x + 6, mark.x + 6 + len(mark.label) * _CHAR
        while any(a < end and start < b and abs(y - baseline) < _LINE for a, b, y in taken):
            baseline += step
        baseline = min(max(baseline, _LINE), height - 2.0)
        taken.append((start, end, baseline))
        placed.append(replace(mark, label_y=_round(baseline)))
    return placed


def layout(
    points: Sequence[QcValue],
    target: Target | None,
    start: datetime,
    end: datetime,
    width: int = _WIDTH,
    height: int = _HEIGHT,
) -> Chart:
    """The chart of one series over [`start`, `end`]; points outside the window are left out."""
    if end <= start:
        raise ValueError("the window must end after it starts")
    plot_width = width - _LEFT - _RIGHT
    plot_height = height - _TOP - _BOTTOM
    shown = sorted((p for p in points if start <= p.at <= end), key=lambda p: p.at)

    # y as a function of the value: SD units around the target, else the values' own span.
    if target is not None:
        low, high = -Z_LIMIT, Z_LIMIT

        def scaled(value: Decimal) -> Decimal:
            return (value - target.mean) / target.sd

    else:
        values = [p.value for p in shown] or [Decimal(0)]
        low, high = min(values), max(values)
        pad = (high - low) / 10 if high > low else max(abs(high) / 10, Decimal(1))
        low, high = low - pad, high + pad

        def scaled(value: Decimal) -> Decimal:
            return value

    def y_of(position: Decimal) -> float:
        return _TOP + float((high - position) / (high - low)) * plot_height

    lines: tuple[Line, ...] = ()
    if target is not None:
        lines = tuple(
            Line(k, _round(y_of(Decimal(k))), _signed(k), _text(target.mean + k * target.sd))
            for k in (3, 2, 1, 0, -1, -2, -3)
        )

    marks = []
    for point in shown:
        position = scaled(point.value)
        offscale = 0
        if position > high:
            position, offscale = high, 1
        elif position < low:
            position, offscale = low, -1
        x = _LEFT + (point.at - start) / (end - start) * plot_width
        marks.append(
            Mark(
                x=_round(x),
                y=_round(y_of(position)),
                point=point,
                state=_state(point),
                offscale=offscale,
                label=", ".join(point.violations),
                title=_title(point),
            )
        )
    marks = _place_labels(marks, _TOP + plot_height / 2, height)
    return Chart(
        width=width,
        height=height,
        left=_LEFT,
        top=_TOP,
        plot_width=plot_width,
        plot_height=plot_height,
        lines=lines,
        ticks=_ticks(start, end, _LEFT, plot_width),
        marks=tuple(marks),
        path=" ".join(f"{m.x},{m.y}" for m in marks),
        has_target=target is not None,
    )
