"""Reports: run directories → a result table (terminal + Markdown), `accuracy.png` and `summary.md`."""

from __future__ import annotations

import os
from pathlib import Path

from .benchmark import bench_report
from .plots import plot_runs
from .summary import RunView, find_runs, format_table, load_run, markdown_table, method_rows, write_summary

__all__ = ["RunView", "load_run", "find_runs", "method_rows", "format_table", "markdown_table", "write_summary",
           "plot_runs", "report", "bench_report"]


def report(directory: str | os.PathLike, notes: list[str] | None = None) -> str:
    """Find the runs under `directory`, write `accuracy.png` and `summary.md` into it; return the terminal table."""
    directory = Path(directory)
    runs = find_runs(directory)
    plot_path = plot_runs(runs, directory / "accuracy.png")
    write_summary(directory, runs, plot_path=plot_path, notes=notes)
    return format_table(method_rows(runs))
