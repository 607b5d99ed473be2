"""A regimes benchmark directory → `plots/`, `report.md` and `report.html`: the report writer.

The pieces, one job each: `bench_views` reads the directory (which cells are pending, running, finished),
`bench_stats` computes the numbers over seeds, `bench_verdicts` turns them into sentences, `bench_tables` into
table cells (and the terminal summary), `bench_figures` draws the PNGs, and `blocks` renders what this module
assembles to Markdown and HTML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from ..curriculum.records import is_number
from ..fileio import write_text
from .bench_cost import TARGETS, cost_rows, time_to_accuracy
from .bench_figures import plot_regime, plot_regime_cost, plot_regime_scores
from .bench_stats import diagnostic_rows, diagnostics_label, has_diagnostics, regime_rows
from .bench_tables import cost_cells, diagnostics_cells, format_bench_table, table_cells, time_to_accuracy_cells
from .bench_verdicts import regime_verdict, time_to_accuracy_verdict
from .bench_views import BenchView, RegimeView, load_bench
from .blocks import Block, to_html, to_markdown
from .summary import DASH, GOOD_MEANS, code_versions, describe_code

__all__ = ["bench_report", "format_bench_table", "load_bench"]  # `gradalign bench` and the CLI import them from here

HOW_TO_READ = (
    "Each cell is one curriculum run (a method in a regime with one seed). **Final accuracy** is the test "
    "accuracy after the last round, as mean ± std over the finished seeds (their number in brackets); **Δ vs "
    "random** is the difference of means. **Steps to random / full** is the first GRPO step at which a seed's "
    "test accuracy reached the final mean accuracy of random / full, averaged over the seeds that reached it, "
    "with how many did: a method that is faster, not only better, reaches them in fewer steps. The **shares** "
    "say what the selections were made of, averaged over rounds and seeds: the target share is the fraction "
    "from the regime's target (validation and test) sources or useful sources; corrupted, trivial and "
    "unsolvable shares are fractions of problems that teach nothing. **Wall time** is the mean over seeds of "
    "the time summed over rounds, in seconds: rollouts include validation rollouts, scoring includes the "
    "selection and warm-up. A difference counts as **beyond the seed spread** when |mean_a − mean_b| > "
    "2·sqrt(std_a²/n_a + std_b²/n_b), roughly a 95% interval of the difference; with 2–3 seeds this is a rule "
    "of thumb, not a significance test, and one seed cannot show a difference. A seed gives every method the same "
    "data and starting model, so each comparison is also made **seed by seed**: the mean ± std of the per-seed "
    "differences over the seeds both finished, beyond its spread when |mean| > 2·std/√n (what a seed changes for "
    "every arm alike, such as an easier test set, drops out). **Pending** cells have not "
    "finished; running ones appear in the curves (which stop at the last step all seeds reached) but not in "
    "the table."
)

COST_HOW_TO_READ = (
    "**Cost** is what a method spent on selection and training, summed over rounds (test evaluation is left out: "
    "every method pays it alike), as mean ± std over the finished seeds: **selection per training generation** "
    "counts the completions generated only to choose problems (candidates, validation, warm-up, offline; less "
    "those training reused) per completion training consumed; generated tokens split the same way; "
    "forward+backward tokens went through a backward pass for selection (scoring, warm-up) or for training. "
    "**Time to accuracy** reads each seed's test accuracy against its cumulative cost: wall time, or generated "
    "tokens (selection's included). Per-round accuracy is noisy, so a seed reaches a target (the seed-mean final "
    "accuracy of full or random) at the first round after which its accuracy stays at or above the target to its "
    "last round; the table gives the cost at that round as mean ± std over the seeds that reached it (how many did "
    "in brackets; the others have no cost to average), and the same rule on the seed-mean curve (mean cost vs mean "
    "accuracy per round). **Accuracy at full's cost** is each seed's accuracy interpolated at full's mean total cost "
    "(its final accuracy if its run cost less). The verdicts compare a crossing's cost with the reference's total "
    "cost, and the accuracy at full's cost with full's final accuracy, by the same seed-spread rule; and seed by "
    "seed, each seed's accuracy at that seed's own full cost against that seed's full final. Where plain GRPO also "
    "ran N times as long (arm **full@xN**), it is a reference like full: timed to, and read at its cost, which "
    "compares a method whose steps cost more than full's with plain GRPO given the same time."
)

DIAGNOSTICS_LEGEND = (
    "per finished seed the mean over rounds, then mean ± std over seeds (their number). Among the candidates a "
    "method could choose: the good share (what a uniform draw gets); the AUC, the chance that a good candidate "
    "outscores a bad one (0.5 = none); the good share of the k best scores and of the selection; and the Spearman "
    "ρ of score and pass rate. Uniform draws do not rank (— for AUC, top-k and ρ); full selects nothing."
)


def _plot_name(regime: str, suffix: str = "") -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", regime) + suffix + ".png"


def _setting(bench: BenchView) -> list[str]:
    items = [f"**preset**: {bench.preset or DASH}",
             f"**seeds**: {', '.join(str(s) for s in bench.seeds)}",
             f"**methods**: {', '.join(bench.methods)}",
             f"**regimes**: {', '.join(bench.regimes)}"]
    run = bench.any_run()
    if run is not None:
        get = run.config.get
        items.append(f"**schedule**: {get('rounds', '?')} rounds × {get('steps_per_round', '?')} GRPO steps × "
                     f"{get('problems_per_step', '?')} problems per step")
        if get("model_name_or_path"):
            items.append(f"**model**: {get('model_name_or_path')}")
        if is_number(get("chunk_size")):
            items.append(f"**chunk**: M = {get('chunk_size')} candidates per round, selection ratio "
                         f"q = {get('selection_ratio', '?')}")
    if bench.config:
        items.append("**overrides**: " + ", ".join(f"{k} = {v}" for k, v in bench.config.items()))
    code = describe_code(code_versions(bench.started_runs()), "cell")
    return items + ([code] if code else [])


def _progress(bench: BenchView) -> str:
    total = len(bench.regimes) * len(bench.methods) * len(bench.seeds)
    done = sum(len(reg.finished(m)) for reg in bench.regimes.values() for m in bench.methods)
    running = sum(len(reg.running(m)) for reg in bench.regimes.values() for m in bench.methods)
    return f"**cells**: {done} of {total} finished, {running} running, {total - done - running} not started"


def _regime_blocks(regime: RegimeView, methods: Sequence[str], plot: Path | None) -> list[Block]:
    """A regime's results table, its verdicts and its figure."""
    rows = regime_rows(regime, methods)
    blocks: list[Block] = [("h2", f"Regime: {regime.name}"),
                           ("p", f"Target sources: {', '.join(regime.target_sources) or DASH}."),
                           ("table", *table_cells(rows)), ("ul", regime_verdict(rows))]
    if plot is not None:
        blocks.append(("img", f"{regime.name}: accuracy vs step and wall time, selection share per round", plot))
    return blocks


def _diagnostics_blocks(regime: RegimeView, methods: Sequence[str], score_plot: Path | None) -> list[Block]:
    """The regime's diagnostics table and score-distribution figure ([] for benchmarks recorded without them)."""
    label = diagnostics_label(regime)
    rows = diagnostic_rows(regime, methods, label) if label else []
    blocks: list[Block] = []
    if has_diagnostics(rows):
        blocks += [("p", f"**Selection diagnostics** (label `{label}`: good = {GOOD_MEANS.get(label, 'good')}): "
                         + DIAGNOSTICS_LEGEND),
                   ("table", *diagnostics_cells(rows))]
    if score_plot is not None:
        blocks.append(("img", f"{regime.name}: scores of the eligible candidates, good vs bad", score_plot))
    return blocks


def _cost_blocks(regime: RegimeView, methods: Sequence[str], cost_plot: Path | None) -> list[Block]:
    """The regime's cost table, its time-to-accuracy table with verdicts, and the time-to-accuracy figure (no tables
    before a cell has finished; no time to accuracy before a reference has)."""
    rows = cost_rows(regime, methods)
    figure: list[Block] = [] if cost_plot is None else [
        ("img", f"{regime.name}: test accuracy vs cumulative wall time and generated tokens", cost_plot)]
    if not any(r["seeds"] for r in rows):
        return figure
    blocks: list[Block] = [("p", f"**Cost** ({regime.name}), mean ± std over the finished seeds:"),
                           ("table", *cost_cells(rows))]
    tta = time_to_accuracy(regime, methods)
    header, body = time_to_accuracy_cells(tta)
    if len(header) == 1:  # nothing to time against yet: a column of names would say nothing
        blocks.append(("p", f"**Time to accuracy** ({regime.name}): no reference ({', '.join(TARGETS)}) has "
                            f"finished seeds yet."))
    else:
        blocks += [("p", f"**Time to accuracy** ({regime.name}): cost to reach a reference's final accuracy for "
                         f"good, and accuracy at full's total cost (and full@xN's) (*How to read this*)."),
                   ("table", header, body)]
    verdicts = time_to_accuracy_verdict(tta)
    if verdicts:
        blocks.append(("ul", verdicts))
    return blocks + figure


def report_blocks(bench: BenchView, plots: dict[str, Path | None],
                  score_plots: dict[str, Path | None] | None = None,
                  cost_plots: dict[str, Path | None] | None = None) -> list[Block]:
    """The whole report: the benchmark's setting and progress, how to read it, then per regime its blocks."""
    blocks: list[Block] = [("h1", f"Data-regimes benchmark: {bench.path.resolve().name}"),
                           ("ul", _setting(bench) + [_progress(bench)]),
                           ("h2", "How to read this"), ("p", HOW_TO_READ), ("p", COST_HOW_TO_READ)]
    for name, regime in bench.regimes.items():
        blocks += _regime_blocks(regime, bench.methods, plots.get(name))
        blocks += _diagnostics_blocks(regime, bench.methods, (score_plots or {}).get(name))
        blocks += _cost_blocks(regime, bench.methods, (cost_plots or {}).get(name))
    return blocks


def bench_report(directory: str | os.PathLike) -> Path:
    """Write `plots/<regime>.png`, `plots/<regime>-cost.png` (and `plots/<regime>-scores.png` where cells have
    scores files), `report.md` and a standalone `report.html` into a benchmark directory (all atomically); returns
    the path of `report.md`."""
    bench = load_bench(directory)
    plots = {name: plot_regime(regime, bench.methods, bench.path / "plots" / _plot_name(name))
             for name, regime in bench.regimes.items()}
    score_plots = {name: plot_regime_scores(regime, bench.methods, bench.path / "plots" / _plot_name(name, "-scores"))
                   for name, regime in bench.regimes.items()}
    cost_plots = {name: plot_regime_cost(regime, bench.methods, bench.path / "plots" / _plot_name(name, "-cost"))
                  for name, regime in bench.regimes.items()}
    blocks = report_blocks(bench, plots, score_plots, cost_plots)
    md_path = bench.path / "report.md"
    write_text(md_path, to_markdown(blocks, bench.path))
    write_text(bench.path / "report.html", to_html(blocks))
    return md_path
