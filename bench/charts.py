"""Bench charts: PNG files next to a bench's JSON, drawn with matplotlib (Debian's
python3-matplotlib, installed by scripts/setup.sh; Agg backend, so no display is needed).
Owns only the drawing: every bench computes its own numbers and picks the file names.

API:
    line_chart(path, title, xlabel, ylabel, series, logx=False, logy=False, dashed=()) -> Path
        series: {line name: [(x, y), ...]}; a None y is a gap (e.g. "not supported" at that x);
        dashed: names of series drawn dashed (limits and references)
    bar_chart(path, title, ylabel, groups) -> Path
        groups: {x category: {series name: value}}; grouped bars, one colour a series, a legend;
        a series missing from a category (or None) leaves its slot empty
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")                       # files only, never a display
import matplotlib.pyplot as plt             # noqa: E402

DPI = 110
SIZE = (8, 4.8)                             # inches: readable at the README's width
MARKERS = "osD^v<>ph*"


def _save(fig, path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=DPI)
    plt.close(fig)
    return p


def line_chart(path, title: str, xlabel: str, ylabel: str,
               series: dict[str, list[tuple[float, float]]],
               logx: bool = False, logy: bool = False, dashed=()) -> Path:
    """One line a series, markers on the measured points; writes a PNG at `path`."""
    fig, ax = plt.subplots(figsize=SIZE)
    for i, (name, points) in enumerate(series.items()):
        pts = sorted(points, key=lambda p: p[0])
        xs = [p[0] for p in pts]
        ys = [float("nan") if p[1] is None else p[1] for p in pts]
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], label=name,
                linestyle="--" if name in dashed else "-")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    _finish(ax, title, ylabel, bool(series), which="both")
    return _save(fig, path)


def _finish(ax, title: str, ylabel: str, legend: bool, **grid) -> None:
    """Title, y label, a light grid and, when there are series, the legend."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, **grid)
    if legend:
        ax.legend(fontsize="small")


def bar_chart(path, title: str, ylabel: str, groups: dict[str, dict[str, float]]) -> Path:
    """Grouped bars: one group an x category, one bar (and legend entry) a series."""
    names: list[str] = []
    for vals in groups.values():
        names += [n for n in vals if n not in names]
    cats = list(groups)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=SIZE)
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, cat in enumerate(cats):
            v = groups[cat].get(name)
            if v is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(v)
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize="x-small", padding=1)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats, rotation=15 if max((len(c) for c in cats), default=0) > 12 else 0,
                       ha="right" if max((len(c) for c in cats), default=0) > 12 else "center",
                       fontsize="small")
    _finish(ax, title, ylabel, bool(names), axis="y")
    return _save(fig, path)
