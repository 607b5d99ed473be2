"""Reports: run directories → a result table (terminal + Markdown), `accuracy.png`, `scores.png` and `summary.md`;
a regimes benchmark directory → `plots/`, `report.md` and `report.html` (`benchmark.bench_report`).

One job per module: `summary` reads run directories and writes `summary.md`; `cost` reads a run's cost (the
ledger's figures, cumulative cost curves and time to accuracy on one curve); `plots` draws their figures; `styles`
gives every method its colour and marker; `markdown` builds pipe tables and links; `blocks` renders a report to
Markdown and HTML; `bench_views`, `bench_stats` (and `bench_cost`), `bench_verdicts`, `bench_tables` and
`bench_figures` read, compute, judge, tabulate and draw a benchmark, and `benchmark` writes its report. Reports read
what the curriculum writes (`curriculum.records`) and are never imported by it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .benchmark import bench_report
from .plots import plot_runs, plot_score_distributions
from .summary import (RunView, find_runs, format_cost_table, format_diagnostics, format_table, load_run,
                      markdown_table, method_rows, write_summary)

__all__ = ["RunView", "load_run", "find_runs", "method_rows", "format_table", "format_cost_table", "markdown_table",
           "write_summary", "plot_runs", "plot_score_distributions", "report", "bench_report"]


def report(directory: str | os.PathLike, notes: list[str] | None = None) -> str:
    """Find the runs under `directory`, write `accuracy.png`, `scores.png` (when some run has scores to split)
    and `summary.md` into it; return the terminal tables: results, the cost ledger (runs that recorded one) and
    one diagnostics line per selecting run."""
    directory = Path(directory)
    runs = find_runs(directory)
    plot_path = plot_runs(runs, directory / "accuracy.png")
    scores_plot = plot_score_distributions(runs, directory / "scores.png")
    write_summary(directory, runs, plot_path=plot_path, notes=notes, scores_plot=scores_plot)
    rows = method_rows(runs)
    parts = [format_table(rows), format_cost_table(rows), format_diagnostics(runs)]
    return "\n\n".join(part for part in parts if part)
