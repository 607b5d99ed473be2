"""One PNG per comparison: test accuracy vs GRPO step, and the corrupted share of each round's selection.

Uses `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global backend switch, safe in
threads and on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_path
from .summary import RunView

# Stable colours for the methods people compare most; others take the next free tab10 colour.
METHOD_COLOURS = {"gradalign": "#1f77b4", "random": "#7f7f7f", "accgreedy": "#d62728", "full": "#2ca02c",
                  "learnalign": "#9467bd", "cropi": "#ff7f0e", "passrate-band": "#8c564b"}
_EXTRA_COLOURS = ["#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def _styles(runs: list[RunView]) -> list[tuple[str, str, str]]:
    """(label, colour, marker) per run; labels name the directory too when two runs share a method."""
    used = {METHOD_COLOURS[r.method] for r in runs if r.method in METHOD_COLOURS}
    spare = [c for c in _EXTRA_COLOURS + list(METHOD_COLOURS.values()) if c not in used]
    methods = [r.method for r in runs]
    taken: set[str] = set()
    styles = []
    for i, run in enumerate(runs):
        colour = METHOD_COLOURS.get(run.method)
        if colour is None or colour in taken:
            colour = spare.pop(0) if spare else f"C{i % 10}"
        taken.add(colour)
        label = run.method if methods.count(run.method) == 1 else f"{run.method} ({run.name})"
        styles.append((label, colour, MARKERS[i % len(MARKERS)]))
    return styles


def _title(runs: list[RunView]) -> str:
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    models = list(dict.fromkeys(str(r.config.get("model")) for r in runs if r.config.get("model")))
    title = f"scenario: {' / '.join(scenarios)}"
    if models:
        title += f"   ·   model: {' / '.join(models)}"
    return title


def plot_runs(runs: list[RunView], path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write the comparison figure to `path` (PNG, atomically); returns the path.

    Left: test accuracy vs GRPO step (step 0 = before training). Right: corrupted share of each round's
    selection, only when some run has one (the unreliable-rewards scenario).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    if not runs:
        raise ValueError("plot_runs: no runs to plot")
    path = Path(path)
    with_shares = any(run.corrupted_shares for run in runs)
    fig = Figure(figsize=(11.5, 4.6) if with_shares else (6.8, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if with_shares else 1, squeeze=False)[0]
    styles = _styles(runs)

    ax = axes[0]
    for run, (label, colour, marker) in zip(runs, styles):
        steps, acc = run.curve()
        ax.plot(steps, acc, color=colour, marker=marker, markersize=6, linewidth=2, label=label)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy (step 0 = before training)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", frameon=False)

    if with_shares:
        ax = axes[1]
        for run, (label, colour, marker) in zip(runs, styles):
            points = [(int(r.get("round", i)) + 1, float(r["selected_corrupted_share"]))
                      for i, r in enumerate(run.rounds) if r.get("selected_corrupted_share") is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=colour, marker=marker, markersize=6, linewidth=2, label=label)
        fractions = {run.config.get("corrupt_fraction") for run in runs
                     if run.scenario == "unreliable-rewards" and run.config.get("corrupt_fraction") is not None}
        if len(fractions) == 1:
            ax.axhline(float(fractions.pop()), color="black", linestyle="--", linewidth=1, alpha=0.6,
                       label="pool share")
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("corrupted share of selection")
        ax.set_title("Selected problems with coin-flip rewards")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", frameon=False)

    fig.suptitle(_title(runs), fontsize=12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
