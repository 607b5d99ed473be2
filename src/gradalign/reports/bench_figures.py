"""The figures of a benchmark report, three PNGs per regime: accuracy vs GRPO step and vs wall time with the share
of the selection that tells the regime's story; time to accuracy (accuracy vs cumulative cost: wall time without
evaluation, generated tokens); and the score distributions good vs bad."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..curriculum.records import is_number
from ..fileio import atomic_path
from ..selection.diagnostics import LABELS
from .bench_cost import seed_curves, time_to_accuracy
from .bench_stats import REGIME_LABEL, Curve, composition, mean_curve
from .cost import AXES
from .bench_views import RegimeView
from .plots import plot_score_distributions
from .styles import method_styles
from .summary import RunView

# The one share per round that tells each regime's story (figure panel c): the share of its label's bad problems
# (REGIME_LABEL); low utility's bad problems are the trivial and the unsolvable ones ("wasted").
SHARE_OF_LABEL = {"utility": "wasted"}
SHARE_LABELS = {"target": "target-task share of selection", "corrupted": "corrupted share of selection",
                "wasted": "trivial + unsolvable share of selection"}


def time_curve(run: RunView) -> Curve | None:
    """(GRPO steps, cumulative wall time): step 0 at time 0; None when a round lacks `timings.total`."""
    totals = [r.get("timings", {}).get("total") if isinstance(r.get("timings"), dict) else None for r in run.rounds]
    if not totals or not all(is_number(t) for t in totals):
        return None
    return run.curve()[0], [0.0, *np.cumsum(np.array(totals, dtype=float)).tolist()]


def plotted_share_key(regime: RegimeView) -> str | None:
    """The share plotted per round: the regime's own, or for another regime the first that any run records."""
    if regime.kind in REGIME_LABEL:
        label = REGIME_LABEL[regime.kind]
        return SHARE_OF_LABEL.get(label, label)
    rows = [row for runs in regime.runs.values() for run in runs.values()
            for row in composition(run.rounds, regime.target_sources)]
    for key in ("corrupted", "wasted", "target"):
        if any(_share_value(row, key) is not None for row in rows):
            return key
    return None


def _share_value(row: dict, key: str) -> float | None:
    if key == "wasted":  # selections that teach nothing: always solved or never solved
        parts = [row["trivial"], row["unsolvable"]]
        return None if all(p is None for p in parts) else sum(p or 0.0 for p in parts)
    return row[key]


def _time_unit(seconds: float) -> tuple[float, str]:
    return (3600.0, "h") if seconds > 7200 else (60.0, "min") if seconds > 120 else (1.0, "s")


def _plot_accuracy(ax, regime: RegimeView, styles: dict) -> None:
    for m, (colour, marker) in styles.items():
        curves = [run.curve() for run in regime.started(m)]
        xs, mean, std = mean_curve(curves)
        if xs.size:
            ax.plot(xs, mean, color=colour, marker=marker, markersize=5, linewidth=2, label=f"{m} ({len(curves)})")
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy, mean ± std over seeds")


def _plot_accuracy_vs_time(ax, regime: RegimeView, styles: dict) -> None:
    series = []
    for m, (colour, marker) in styles.items():
        pairs = [(run.curve(), time_curve(run)) for run in regime.started(m)]
        pairs = [(acc, t) for acc, t in pairs if t is not None]
        if pairs:
            _, acc, _ = mean_curve([p[0] for p in pairs])
            _, seconds, _ = mean_curve([p[1] for p in pairs])
            series.append((m, colour, marker, seconds, acc))
    top = max((float(np.nanmax(s[3])) for s in series if s[3].size), default=0.0)
    scale, unit = _time_unit(top)
    for m, colour, marker, seconds, acc in series:
        ax.plot(seconds / scale, acc, color=colour, marker=marker, markersize=5, linewidth=2, label=m)
    ax.set_xlabel(f"wall time ({unit}, mean cumulative)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy vs wall time")


def _plot_composition(ax, regime: RegimeView, styles: dict, key: str) -> None:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    for m, (colour, marker) in styles.items():
        curves = []
        for run in regime.started(m):
            rows = composition(run.rounds, regime.target_sources)
            curves.append(([row["round"] + 1 for row in rows], [_share_value(row, key) for row in rows]))
        xs, mean, _ = mean_curve(curves)
        if xs.size and not np.all(np.isnan(mean)):
            ax.plot(xs, mean, color=colour, marker=marker, markersize=5, linewidth=2, label=m)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(SHARE_LABELS[key])
    ax.set_title("What was selected (mean over seeds)")


def _styles(methods: Sequence[str], shown: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) of each shown method, assigned over all methods: a method looks the same in every regime
    and figure (a method named twice is still one line, in its own colour)."""
    methods = list(dict.fromkeys(methods))
    styles = dict(zip(methods, method_styles(methods)))
    return {m: styles[m] for m in shown}


def plot_regime(regime: RegimeView, methods: Sequence[str], path: str | os.PathLike, dpi: int = 110) -> Path | None:
    """One PNG (atomically) for a regime: accuracy vs step (±std band), vs wall time, and the regime's share
    per round; panels without data are left out. None when no cell has started."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [m for m in methods if regime.started(m)]
    if not shown:
        return None
    styles = _styles(methods, shown)
    with_time = any(time_curve(run) for m in shown for run in regime.started(m))
    share_key = plotted_share_key(regime)
    panels = ["accuracy"] + (["time"] if with_time else []) + (["share"] if share_key else [])
    fig = Figure(figsize=(5.6 * len(panels), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "accuracy":
            _plot_accuracy(ax, regime, styles)
        elif panel == "time":
            _plot_accuracy_vs_time(ax, regime, styles)
        else:
            _plot_composition(ax, regime, styles, share_key)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    fig.suptitle(f"regime: {regime.name}", fontsize=12)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def plot_regime_scores(regime: RegimeView, methods: Sequence[str], path: Path) -> Path | None:
    """Score distributions, good vs bad under the regime's label, of each method's first started seed."""
    runs = [seeds[min(seeds)] for m in methods if (seeds := regime.runs.get(m))]
    own = REGIME_LABEL.get(regime.kind)
    labels = ([own] if own else []) + [name for name in LABELS if name != own]
    return plot_score_distributions(runs, path, labels, regime.target_sources or None,
                                    title=f"regime: {regime.name}   ·   scores of the eligible candidates, good vs bad "
                                          f"(first seed, all rounds pooled)")


# ── time to accuracy: accuracy against cumulative cost ───────────────────────────────────────────────────────
def _count_unit(count: float) -> tuple[float, str]:
    return (1e6, "M") if count > 2e6 else (1e3, "k") if count > 2e3 else (1.0, "")


def _plot_accuracy_vs_cost(ax, regime: RegimeView, styles: dict, axis: str, tta: dict) -> None:
    """Seed-mean accuracy (±std band) against seed-mean cumulative cost; the reference targets as horizontal lines
    in their method's colour, each budget arm's mean total cost (full's, full@xN's) as a vertical line."""
    series = []
    for m, (colour, marker) in styles.items():
        curves = seed_curves(regime.started(m), axis)
        if curves:
            _, acc, std = mean_curve([(steps, a) for steps, _, a in curves])
            _, cost, _ = mean_curve([(steps, c) for steps, c, _ in curves])
            series.append((f"{m} ({len(curves)})", colour, marker, cost, acc, std))
    top = max((float(np.nanmax(s[3])) for s in series if s[3].size), default=0.0)
    scale, unit = _time_unit(top) if axis == "seconds" else _count_unit(top)
    for label, colour, marker, cost, acc, std in series:
        ax.plot(cost / scale, acc, color=colour, marker=marker, markersize=5, linewidth=2, label=label)
        ax.fill_between(cost / scale, acc - std, acc + std, color=colour, alpha=0.12, linewidth=0)
    for ref, target in tta["targets"].items():
        ax.axhline(target, color=styles.get(ref, ("#444444", ""))[0], linestyle=":", linewidth=1.2)
    for arm, budget in tta["budgets"].items():  # full's and every full@xN's
        if budget[axis] is not None:
            ax.axvline(budget[axis] / scale, color=styles.get(arm, ("#444444", ""))[0], linestyle="--", linewidth=1.0)
    if axis == "seconds":
        ax.set_xlabel(f"wall time ({unit}, mean cumulative, evaluation excluded)")
    else:
        ax.set_xlabel(f"generated tokens ({unit + ', ' if unit else ''}mean cumulative, selection included)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Test accuracy vs {AXES[axis]}")


def plot_regime_cost(regime: RegimeView, methods: Sequence[str], path: str | os.PathLike,
                     dpi: int = 110) -> Path | None:
    """One PNG (atomically) for a regime's time to accuracy: accuracy against cumulative wall time and against
    cumulative generated tokens (that panel only when some cell recorded the ledger); dotted lines at the
    references' final accuracy, dashed at the mean total cost of full (and of each full@xN). None when no cell has
    started."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [m for m in methods if regime.started(m)]
    if not shown:
        return None
    styles = _styles(methods, shown)
    axes = [axis for axis in AXES if any(seed_curves(regime.started(m), axis) for m in shown)]
    tta = time_to_accuracy(regime, methods)
    fig = Figure(figsize=(6.4 * len(axes), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, axis in zip(fig.subplots(1, len(axes), squeeze=False)[0], axes):
        _plot_accuracy_vs_cost(ax, regime, styles, axis, tta)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    fig.suptitle(f"regime: {regime.name}   ·   time to accuracy (dotted: final accuracy of "
                 f"{' / '.join(tta['targets']) or 'the references'}; dashed: total cost of "
                 f"{' / '.join(tta['budgets'])})", fontsize=11)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _legend(ax) -> None:
    """The panel's legend, when it has a labelled line (a regime with nothing finished has none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", frameon=False, fontsize=9)
