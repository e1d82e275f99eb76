"""Pictures of results, through matplotlib (the optional `plot` extra): `runsup results --plot`
and the demo's Erlang B comparison are drawn by the same code, into PNG files.

matplotlib is imported only when a picture is drawn (it takes most of a second), with the
non-interactive Agg backend (no display needed, nothing opens a window).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.errors import SupervisorError, ValidationError
from supervisor.results import CONFIG_PREFIX, ResultsTable, cell_text, resolve_column

INSTALL_HINT = "pip install 'run-supervisor[plot]'"
DEFAULT_PLOT_FILE = "results.png"
FIGURE_SIZE_INCHES = (7.0, 4.5)
FIGURE_DPI = 110
# Lines past this many get no legend entries of their own (the legend would hide the plot).
MAX_LEGEND_ENTRIES = 12
EXACT_CURVE_POINTS = 200


class PlotUnavailable(SupervisorError):
    """matplotlib is not installed."""


@dataclass
class Series:
    """One line of a plot: points (x, y) and, optionally, an error bar (low, high) for each."""

    label: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    low: list[float] | None = None
    high: list[float] | None = None
    markers_only: bool = False


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            f"drawing a plot needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(series: Sequence[Series], *, x_label: str, y_label: str, title: str, out: Path) -> Path:
    """Draw the lines into the PNG `out` (made or replaced); returns its path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    try:
        for index, s in enumerate(series):
            label = s.label if index < MAX_LEGEND_ENTRIES else None
            style = "o" if s.markers_only else "o-"
            if s.low is not None and s.high is not None:
                below = [y - lo for y, lo in zip(s.y, s.low, strict=True)]
                above = [hi - y for y, hi in zip(s.y, s.high, strict=True)]
                ax.errorbar(s.x, s.y, yerr=[below, above], fmt=style, capsize=3, label=label)
            elif s.markers_only or len(s.x) == 1:
                ax.plot(s.x, s.y, "o", label=label)
            else:
                ax.plot(s.x, s.y, style if len(s.x) < 40 else "-", label=label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if any(s.label for s in series):
            ax.legend(fontsize="small")
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            fig.savefig(out, format="png")
        except OSError as exc:
            raise ValidationError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def results_series(table: ResultsTable, x: str, y: str) -> tuple[str, str, list[Series]]:
    """Column Y against column X, one line for each value of the other differing config keys.

    X and Y may leave out their `config.`/`results.` prefix when that is unambiguous. Runs
    without a number in both are left out. ValidationError when nothing is left to draw.
    """
    try:
        x_col = resolve_column(table.columns, x)
        y_col = resolve_column(table.columns, y)
    except ValueError as exc:
        raise ValidationError(f"--plot: {exc}") from None
    others = [c for c in table.columns if c.startswith(CONFIG_PREFIX) and c not in (x_col, y_col)]
    lines: dict[str, Series] = {}
    for row in table.rows:
        xv, yv = _number(row.get(x_col)), _number(row.get(y_col))
        if xv is None or yv is None:
            continue
        label = ", ".join(f"{c[len(CONFIG_PREFIX) :]}={cell_text(row.get(c))}" for c in others)
        line = lines.setdefault(label, Series(label))
        line.x.append(xv)
        line.y.append(yv)
    if not lines:
        raise ValidationError(f"--plot: no run shown has numbers in both {x_col} and {y_col}")
    for line in lines.values():
        order = sorted(range(len(line.x)), key=line.x.__getitem__)
        line.x = [line.x[i] for i in order]
        line.y = [line.y[i] for i in order]
    return x_col, y_col, list(lines.values())


def plot_results(table: ResultsTable, spec: str, out: Path) -> tuple[Path, int]:
    """`runsup results --plot X:Y --out F.png`: (the file, how many runs it shows)."""
    x, sep, y = spec.partition(":")
    if not sep or not x or not y:
        raise ValidationError(f"--plot {spec!r}: expected X:Y (two column names)")
    x_col, y_col, series = results_series(table, x, y)
    drawn = draw(series, x_label=x_col, y_label=y_col, title=f"{y_col} against {x_col}", out=out)
    return drawn, sum(len(s.x) for s in series)


@dataclass(frozen=True)
class BlockingPoint:
    """One offered load of the demo: simulated blocking with its confidence interval."""

    load: float
    mean: float
    ci_low: float
    ci_high: float


def plot_erlang_b(
    points: Sequence[BlockingPoint],
    channels: int,
    exact: Callable[[float, int], float],
    out: Path,
    *,
    confidence: float = 0.95,
) -> Path:
    """The demo's picture: simulated blocking (with its confidence intervals) against the exact
    Erlang B curve `exact(load, channels)`."""
    ordered = sorted(points, key=lambda p: p.load)
    low = min(p.load for p in ordered)
    high = max(p.load for p in ordered)
    step = (high - low) / (EXACT_CURVE_POINTS - 1) if high > low else 0.0
    loads = [low + i * step for i in range(EXACT_CURVE_POINTS)] if step else [low]
    curve = Series(
        f"Erlang B, {channels} channels (exact)", loads, [exact(a, channels) for a in loads]
    )
    simulated = Series(
        f"simulated (mean, {confidence:.0%} confidence interval)",
        [p.load for p in ordered],
        [p.mean for p in ordered],
        [p.ci_low for p in ordered],
        [p.ci_high for p in ordered],
        markers_only=True,
    )
    return draw(
        [curve, simulated],
        x_label="offered load (erlangs)",
        y_label="blocking probability",
        title="erlang-demo: simulated blocking against Erlang B",
        out=out,
    )
