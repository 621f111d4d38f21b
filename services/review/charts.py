"""Line charts over time as plain geometry, drawn as inline SVG by the templates.

Server-side and dependency-free: no plotting library in the request path, no script, nothing
fetched by the browser; the template escapes every text it writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

MAX_POINTS = 400


@dataclass(frozen=True)
class Line:
    name: str
    points: str  # "x,y x,y …" for <polyline points=…>
    last: tuple[float, float]  # where the last point is drawn
    last_value: float
    n: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    lines: tuple[Line, ...]
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    reference: tuple[float, str] | None = None  # (y, label) of a dashed horizontal line

    @property
    def empty(self) -> bool:
        return not self.lines

    @property
    def bottom(self) -> int:
        return self.top + self.plot_height

    @property
    def right(self) -> int:
        return self.left + self.plot_width


def thin(points: list[tuple[datetime, float]], most: int = MAX_POINTS) -> list[tuple[datetime, float]]:
    """At most `most` points, evenly picked, always keeping the last."""
    if len(points) <= most:
        return points
    step = len(points) / most
    picked = [points[int(i * step)] for i in range(most - 1)]
    return picked + [points[-1]]


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def time_chart(series: dict[str, list[tuple[datetime, float]]], *, width: int = 640, height: int = 200,
               y_max: float = 1.0, reference: float | None = None, reference_label: str = "") -> Chart:
    """Lines of (time, value in [0, y_max]) sharing one time axis; values are clamped to the axis."""
    left, top, right_pad, bottom_pad = 46, 10, 12, 26
    pw, ph = width - left - right_pad, height - top - bottom_pad
    series = {name: thin(sorted(((_utc(t), v) for t, v in pts), key=lambda p: p[0]))
              for name, pts in series.items() if pts}
    stamps = [t for pts in series.values() for t, _ in pts]
    y_ticks = tuple((top + ph - ph * f, f"{100 * f * y_max:.0f} %") for f in (0, 0.25, 0.5, 0.75, 1.0))
    ref = None
    if reference is not None:
        ref = (top + ph - ph * min(max(reference / y_max, 0.0), 1.0), reference_label)
    if not stamps:
        return Chart(width, height, left, top, pw, ph, (), (), y_ticks, ref)
    t0, t1 = min(stamps), max(stamps)
    if t1 - t0 < timedelta(minutes=1):
        t0, t1 = t0 - timedelta(seconds=30), t1 + timedelta(seconds=30)
    span = (t1 - t0).total_seconds()

    def xy(t: datetime, v: float) -> tuple[float, float]:
        x = left + pw * (t - t0).total_seconds() / span
        y = top + ph - ph * min(max(v / y_max, 0.0), 1.0)
        return round(x, 1), round(y, 1)

    lines = []
    for name, pts in series.items():
        coords = [xy(t, v) for t, v in pts]
        lines.append(Line(name, " ".join(f"{x},{y}" for x, y in coords), coords[-1], pts[-1][1], len(pts)))
    fmt = "%H:%M" if span < 86400 else "%m-%d %H:%M"
    x_ticks = tuple((round(left + pw * f, 1), (t0 + timedelta(seconds=span * f)).strftime(fmt))
                    for f in (0, 0.5, 1.0))
    return Chart(width, height, left, top, pw, ph, tuple(lines), x_ticks, y_ticks, ref)
