"""One PNG per comparison: test accuracy vs GRPO step, and the corrupted share of each round's selection; and
one of the score distributions of the eligible candidates, good vs bad (`scores/round-NNN.csv`).

Uses `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global backend switch, safe in
threads and on machines without a display.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.regimes import CORRUPTED_POOLS
from ..fileio import atomic_path
from ..selection.diagnostics import LABELS, is_good, read_scores
from .styles import method_styles
from .summary import RunView


def _run_labels(runs: list[RunView]) -> list[str]:
    """Per run, its method; with the directory too when two runs share a method."""
    methods = [r.method for r in runs]
    return [run.method if methods.count(run.method) == 1 else f"{run.method} ({run.name})" for run in runs]


def _title(runs: list[RunView]) -> str:
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    models = list(dict.fromkeys(str(r.config.get("model_name_or_path")) for r in runs
                                if r.config.get("model_name_or_path")))
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
    styles = list(zip(_run_labels(runs), method_styles([run.method for run in runs])))

    ax = axes[0]
    for run, (label, (colour, marker)) in zip(runs, styles):
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
        for run, (label, (colour, marker)) in zip(runs, styles):
            points = [(int(r.get("round", i)) + 1, float(r["selected_corrupted_share"]))
                      for i, r in enumerate(run.rounds) if r.get("selected_corrupted_share") is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=colour, marker=marker, markersize=6, linewidth=2, label=label)
        fractions = {run.config.get("corrupt_fraction") for run in runs
                     if run.scenario in CORRUPTED_POOLS and run.config.get("corrupt_fraction") is not None}
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


# ── score distributions, good vs bad ─────────────────────────────────────────────────────────────────────────
GOOD_BAD = {"corrupted": ("clean", "corrupted"), "target": ("target", "other"), "utility": ("useful", "not useful")}
GOOD_COLOUR, BAD_COLOUR = "#2ca02c", "#d62728"


def run_validation_sources(run_dir: Path) -> set[str]:
    """The sources of `problems/validation.jsonl` (the *target* label's good side); empty when absent or garbled."""
    path = run_dir / "problems" / "validation.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return set()
    return {str(r["source"]) for r in rows if isinstance(r, dict) and r.get("source")}


def _score(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def ranked_score_rows(run_dir: Path) -> list[dict]:
    """The eligible candidates (rank not empty) of every round whose scores differ, all rounds pooled; [] without
    scores files (`full`, older runs) and for uniform draws (one score for every eligible candidate)."""
    rows = []
    for path in sorted((run_dir / "scores").glob("round-*.csv")):
        try:
            table = [r for r in read_scores(path) if r.get("rank") and not math.isnan(_score(r.get("score")))]
        except (OSError, UnicodeDecodeError):
            continue
        if len({_score(r["score"]) for r in table}) > 1:
            rows += table
    return rows


def good_mask(rows: list[dict], label: str, validation_sources: set[str]) -> np.ndarray | None:
    """Per row, True = good under `label` (`selection.diagnostics.is_good`); None when the rows lack the label."""
    carried = {"corrupted": any(r.get("corrupted") for r in rows), "target": bool(validation_sources),
               "utility": any(r.get("utility") for r in rows)}
    if not carried.get(label):
        return None
    return np.array([is_good(label, r.get("corrupted") == "True", r.get("source"), r.get("utility") or None,
                             validation_sources) for r in rows])


def score_split(run: RunView, labels: Sequence[str] = LABELS,
                validation_sources: Sequence[str] | None = None) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(label, good scores, bad scores) of the run's eligible candidates under the first of `labels` with both
    sides present; None when there is nothing to split. Validation sources default to the run directory's."""
    rows = ranked_score_rows(run.path) if run.path is not None else []
    if not rows:
        return None
    sources = set(validation_sources) if validation_sources is not None else run_validation_sources(run.path)
    scores = np.array([_score(r["score"]) for r in rows])
    for label in labels:
        good = good_mask(rows, label, sources)
        if good is not None and good.any() and not good.all():
            return label, scores[good], scores[~good]
    return None


def _score_panel(ax, name: str, label: str, good: np.ndarray, bad: np.ndarray) -> None:
    both = np.concatenate([good, bad])
    edges = np.histogram_bin_edges(both, bins=int(np.clip(np.sqrt(both.size), 10, 40)))
    for values, side, colour in ((good, 0, GOOD_COLOUR), (bad, 1, BAD_COLOUR)):
        ax.hist(values, bins=edges, density=True, histtype="stepfilled", color=colour, alpha=0.25)
        ax.hist(values, bins=edges, density=True, histtype="step", color=colour, linewidth=2,
                label=f"{GOOD_BAD.get(label, ('good', 'bad'))[side]} ({values.size})")
    ax.set_title(f"{name}  ·  label: {label}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", frameon=False, fontsize=9)


def plot_score_distributions(runs: list[RunView], path: str | os.PathLike, labels: Sequence[str] = LABELS,
                             validation_sources: Sequence[str] | None = None, title: str | None = None,
                             dpi: int = 110) -> Path | None:
    """Histograms of the eligible candidates' scores, good vs bad (the first of `labels` a run carries), one
    panel per run, all rounds pooled; written to `path` (PNG, atomically). Runs without scores files, with
    uniform draws or without a label are left out; None (nothing written) when no run is left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(name, split) for run, name in zip(runs, _run_labels(runs))
              if (split := score_split(run, labels, validation_sources)) is not None]
    if not panels:
        return None
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, split) in zip(axes, panels):
        _score_panel(ax, name, *split)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or f"Scores of the eligible candidates, good vs bad (all rounds pooled)   ·   {_title(runs)}",
                 fontsize=11)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
