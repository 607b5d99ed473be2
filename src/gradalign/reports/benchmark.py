"""A regimes benchmark directory → per-regime tables, verdicts, figures, `report.md` and `report.html`.

`gradalign bench regimes` runs every selection method in each data regime with several seeds; every cell is an
ordinary run directory (`OUT/<regime>/<method>/seed-<s>/`). This module only reads those files, so it reports a
finished benchmark and one still running alike.

Which cells count where:
- a cell whose `rounds.jsonl` is missing or empty has not started: it is *pending* and skipped;
- a cell with fewer rounds than its config's `rounds` is *running*: also pending, and left out of the table's
  statistics (finals taken at different steps would not compare), but its rounds so far are in the curves,
  which then stop at the last step every seed reached;
- a cell with all its rounds is *finished*: the table and the verdicts use finished cells only.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..fileio import atomic_path, write_text
from ..selection.diagnostics import LABELS
from ..curriculum.records import has_rounds, is_number, time_split
from .plots import EXTRA_COLOURS, MARKERS, METHOD_COLOURS, plot_score_distributions
from .summary import (DASH, GOOD_MEANS, RunView, diagnostics_labels, diagnostics_means, format_seconds, format_share,
                      load_run, read_json_object, round_diagnostics)

Stats = tuple[float, float, int]  # (mean, std, n) over seeds
Curve = tuple[Sequence[float], Sequence[float]]  # (x, y) of one seed
# the methods every other one is measured against; nonzero-variance because any rollout-based filter drops the
# zero-variance problems: only the gain over it is a gradient's own
REFERENCES = ("random", "full", "nonzero-variance")
# our methods, each also measured against the published one
BEYOND_PAPER = {"gradalign-z": "gradalign", "gradalign-zcos": "gradalign"}
UTILITIES = ("useful", "trivial", "unsolvable")
SHARES = ("target", "corrupted", "trivial", "unsolvable")  # table columns, in order
TIMES = ("rollouts", "scoring", "training", "evaluation", "total")
# The one share per round that tells each regime's story (figure panel c).
PLOTTED_SHARE = {"imbalance": "target", "unreliable-rewards": "corrupted", "low-utility": "wasted",
                 "gsm-symbolic": "corrupted"}
SHARE_LABELS = {"target": "target-task share of selection", "corrupted": "corrupted share of selection",
                "wasted": "trivial + unsolvable share of selection"}
# The label whose diagnostics tell each regime's story (selection/diagnostics.py: what counts as good).
REGIME_LABEL = {"unreliable-rewards": "corrupted", "imbalance": "target", "low-utility": "utility",
                "gsm-symbolic": "corrupted"}
DIAGNOSTIC_COLUMNS = (("eligible_good_share", "eligible good share"), ("auc", "AUC (good vs bad)"),
                      ("top_good_share", "top-k good share"), ("selected_good_share", "selected good share"))
THRESHOLD_TOLERANCE = 1e-9  # a seed that ends exactly at the mean of equal finals must count as reaching it


# ── metrics (pure) ───────────────────────────────────────────────────────────────────────────────────────────
def seed_stats(values: Iterable[float | None]) -> Stats:
    """(mean, std, n) over seeds, ignoring NaN and None; std uses ddof=1 when n > 1, else 0.0 (mean NaN if n=0)."""
    xs = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    xs = xs[~np.isnan(xs)]
    if xs.size == 0:
        return math.nan, 0.0, 0
    return float(xs.mean()), float(xs.std(ddof=1)) if xs.size > 1 else 0.0, int(xs.size)


def steps_to_threshold(steps: Sequence[float], accs: Sequence[float], threshold: float) -> int | None:
    """The first GRPO step (> 0: step 0 is before training) whose accuracy is >= threshold; None if never.

    Ties count as reached, with a 1e-9 tolerance so that float noise in a mean does not decide them.
    """
    for step, acc in zip(steps, accs):
        if step > 0 and acc is not None and not math.isnan(acc) and acc >= threshold - THRESHOLD_TOLERANCE:
            return int(step)
    return None


def mean_curve(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) over seeds at the steps every seed has: an unfinished seed shortens the curve."""
    if not curves:
        return np.array([], dtype=float), np.array([], dtype=float), np.array([], dtype=float)
    common = set(curves[0][0])
    for steps, _ in curves[1:]:
        common &= set(steps)
    xs = sorted(common)
    lookups = [dict(zip(steps, ys)) for steps, ys in curves]
    stats = [seed_stats(lookup[x] for lookup in lookups) for x in xs]
    return (np.array(xs, dtype=float), np.array([s[0] for s in stats], dtype=float),
            np.array([s[1] for s in stats], dtype=float))


def composition(rounds: Sequence[dict], target_sources: Sequence[str]) -> list[dict]:
    """Per round, what the selection was made of: shares of `selected_count` (None where not applicable).

    `target`: from `target_sources` (None without target sources or `selected_by_source`); `corrupted`: the
    round's `selected_corrupted_share`; `useful` / `trivial` / `unsolvable`: from `selected_by_utility`.
    """
    out = []
    for i, r in enumerate(rounds):
        by_source = r.get("selected_by_source") if isinstance(r.get("selected_by_source"), dict) else None
        by_utility = r.get("selected_by_utility") if isinstance(r.get("selected_by_utility"), dict) else None
        count = r.get("selected_count")
        if not is_number(count):  # older records: the counts themselves add up to it
            count = sum((by_source or by_utility or {}).values())
        row: dict[str, Any] = {"round": int(r.get("round", i)), "corrupted": None, "target": None}
        row.update(dict.fromkeys(UTILITIES))
        if count and count > 0:
            if by_source is not None and target_sources:
                row["target"] = sum(float(by_source.get(s, 0)) for s in target_sources) / count
            if is_number(r.get("selected_corrupted_share")):
                row["corrupted"] = float(r["selected_corrupted_share"])
            if by_utility is not None:
                row.update({u: float(by_utility.get(u, 0)) / count for u in UTILITIES})
        out.append(row)
    return out


def spread_margin(a: Stats, b: Stats) -> float:
    """2·sqrt(std_a²/n_a + std_b²/n_b): twice the standard error of the difference of two seed means."""
    return 2.0 * math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2]) if a[2] and b[2] else math.nan


def beyond_spread(a: Stats, b: Stats) -> bool:
    """Whether two (mean, std, n) differ beyond the seed spread: |mean_a − mean_b| > spread_margin(a, b).

    The margin is roughly a 95% interval of the difference (normal approximation; with 2–3 seeds a t-interval
    would be wider, so read it as a rule of thumb, not a test). With n < 2 for either side it is False: one
    seed has no spread, so it cannot show a difference.
    """
    if a[2] < 2 or b[2] < 2 or math.isnan(a[0]) or math.isnan(b[0]):
        return False
    return abs(a[0] - b[0]) > spread_margin(a, b)


# ── reading a benchmark directory ────────────────────────────────────────────────────────────────────────────
def is_finished(run: RunView) -> bool:
    """All the rounds its config asks for are recorded (a config without `rounds`: any round is the end)."""
    wanted = run.config.get("rounds")
    return len(run.rounds) >= (int(wanted) if is_number(wanted) and wanted > 0 else 1)


@dataclass
class RegimeView:
    """One regime of a benchmark: its started cells, method → seed → run, and the cells not started."""

    name: str
    kind: str  # the regime's type (regime.json "regime"), which picks the share that tells its story
    target_sources: list[str]
    runs: dict[str, dict[int, RunView]]
    not_started: dict[str, list[int]]

    def finished(self, method: str) -> list[RunView]:
        return [run for run in self.runs.get(method, {}).values() if is_finished(run)]

    def running(self, method: str) -> list[int]:
        return [seed for seed, run in self.runs.get(method, {}).items() if not is_finished(run)]

    def started(self, method: str) -> list[RunView]:
        return list(self.runs.get(method, {}).values())


@dataclass
class BenchView:
    """A benchmark directory, read: its settings (bench.json) and one `RegimeView` per regime."""

    path: Path
    preset: str | None
    methods: list[str]
    seeds: list[int]
    config: dict
    regimes: dict[str, RegimeView] = field(default_factory=dict)

    def any_run(self) -> RunView | None:
        return next((run for reg in self.regimes.values() for seeds in reg.runs.values() for run in seeds.values()),
                    None)


def _names(path: Path, data: dict, key: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{path}: '{key}' must be a non-empty list of names")
    return value


def _read_bench_json(path: Path) -> dict:
    data = read_json_object(path, "the benchmark's settings", missing="not a benchmark directory?")
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ValueError(f"{path}: 'seeds' must be a non-empty list of integers")
    if not isinstance(data.get("config", {}), dict):
        raise ValueError(f"{path}: 'config' must be an object of config overrides")
    return {"regimes": _names(path, data, "regimes"), "methods": _names(path, data, "methods"), "seeds": seeds,
            "preset": data.get("preset"), "config": data.get("config") or {}}


def _read_regime_json(path: Path, name: str) -> tuple[str, list[str]]:
    """(kind, target sources); a regime not started yet has no regime.json: its name, no targets."""
    if not path.is_file():
        return name, []
    data = read_json_object(path, "the regime's settings")
    kind, targets = data.get("regime", name), data.get("target_sources", [])
    if not isinstance(kind, str) or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{path}: expected 'regime' (a name) and 'target_sources' (a list of source names)")
    return kind, targets


def load_regime(directory: Path, name: str, methods: list[str], seeds: list[int]) -> RegimeView:
    kind, targets = _read_regime_json(directory / "regime.json", name)
    runs: dict[str, dict[int, RunView]] = {m: {} for m in methods}
    not_started: dict[str, list[int]] = {m: [] for m in methods}
    for method in methods:
        for seed in seeds:
            cell = directory / method / f"seed-{seed}"
            if has_rounds(cell):
                runs[method][seed] = load_run(cell)
            else:
                not_started[method].append(seed)
    return RegimeView(name, kind, targets, runs, not_started)


def load_bench(directory: str | os.PathLike) -> BenchView:
    """Read `directory/bench.json` and every cell it names; a garbled file is a one-line ValueError naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    meta = _read_bench_json(directory / "bench.json")
    bench = BenchView(directory, meta["preset"], meta["methods"], meta["seeds"], meta["config"])
    for name in meta["regimes"]:
        bench.regimes[name] = load_regime(directory / name, name, meta["methods"], meta["seeds"])
    return bench


# ── one table row per method ─────────────────────────────────────────────────────────────────────────────────
def final_stats(runs: Sequence[RunView]) -> Stats:
    return seed_stats(run.curve()[1][-1] for run in runs)


def extra_test_stats(runs: Sequence[RunView]) -> dict[str, Stats]:
    """Final accuracy on each extra test set (e.g. imbalance's other tasks: forgetting), over seeds."""
    names = sorted({name for run in runs if run.rounds for name in (run.rounds[-1]["test"].get("extra") or {})})
    return {name: seed_stats((run.rounds[-1]["test"].get("extra") or {}).get(name, {}).get("accuracy")
                             for run in runs if run.rounds) for name in names}


def _steps_reached(runs: Sequence[RunView], threshold: float | None) -> tuple[float | None, int, int]:
    """(mean steps over the seeds that reached `threshold`, how many reached it, how many seeds)."""
    if threshold is None or math.isnan(threshold):
        return None, 0, 0
    steps = [steps_to_threshold(*run.curve(), threshold) for run in runs]
    reached = [s for s in steps if s is not None]
    return (float(np.mean(reached)) if reached else None), len(reached), len(runs)


def _mean_share(runs: Sequence[RunView], targets: Sequence[str], key: str) -> float | None:
    """Mean over seeds of each seed's mean share over rounds; None when no round has it."""
    per_seed = [seed_stats(row[key] for row in composition(run.rounds, targets))[0] for run in runs]
    mean, _, n = seed_stats(per_seed)
    return mean if n else None


def _mean_time(runs: Sequence[RunView], key: str) -> float | None:
    mean, _, n = seed_stats(time_split(run.rounds)[key] for run in runs)
    return mean if n else None


def regime_rows(regime: RegimeView, methods: Sequence[str]) -> list[dict]:
    """One row per method: final accuracy over finished seeds, Δ vs random, steps to the references' finals,
    selection shares, mean wall-time split, and pending cells."""
    finals = {m: final_stats(regime.finished(m)) for m in methods}
    thresholds = {ref: finals[ref][0] if ref in finals and finals[ref][2] else None for ref in REFERENCES}
    rows = []
    for m in methods:
        runs = regime.finished(m)
        running = len(regime.running(m))
        rows.append({
            "method": m, "final": finals[m], "extra": extra_test_stats(runs),
            "delta": (finals[m][0] - thresholds["random"]
                      if thresholds["random"] is not None and finals[m][2] else None),
            "thresholds": thresholds,
            "steps_to": {ref: _steps_reached(runs, thresholds[ref]) for ref in REFERENCES},
            "shares": {k: _mean_share(runs, regime.target_sources, k) for k in SHARES},
            "times": {k: _mean_time(runs, k) for k in TIMES},
            "pending": len(regime.not_started.get(m, [])) + running, "running": running,
        })
    return rows


def diagnostics_label(regime: RegimeView) -> str | None:
    """The label a regime's diagnostics are read under: the regime's own (REGIME_LABEL) when its records carry
    it, else the first they carry; None when no record has diagnostics (older benchmarks, `full` only)."""
    found = diagnostics_labels([d for seeds in regime.runs.values() for run in seeds.values()
                                for d in round_diagnostics(run)])
    own = REGIME_LABEL.get(regime.kind)
    return own if own in found else (found[0] if found else None)


def diagnostic_rows(regime: RegimeView, methods: Sequence[str], label: str) -> list[dict]:
    """One row per method: over finished seeds, the Stats of each seed's mean over rounds of DIAGNOSTIC_COLUMNS
    under `label`, and of the label-free score–pass-rate correlation."""
    rows = []
    for m in methods:
        means = [d for d in (diagnostics_means(run) for run in regime.finished(m)) if d is not None]
        rows.append({"method": m,
                     **{k: seed_stats(d["labels"].get(label, {}).get(k) for d in means) for k, _ in DIAGNOSTIC_COLUMNS},
                     "pass_rate_corr": seed_stats(d["label_free"]["pass_rate_corr"] for d in means)})
    return rows


def _regime_score_plot(regime: RegimeView, methods: Sequence[str], path: Path) -> Path | None:
    """Score distributions, good vs bad under the regime's label, of each method's first started seed."""
    runs = [seeds[min(seeds)] for m in methods if (seeds := regime.runs.get(m))]
    own = REGIME_LABEL.get(regime.kind)
    labels = ([own] if own else []) + [name for name in LABELS if name != own]
    return plot_score_distributions(runs, path, labels, regime.target_sources or None,
                                    title=f"regime: {regime.name}   ·   scores of the eligible candidates, good vs bad "
                                          f"(first seed, all rounds pooled)")


# ── verdicts ─────────────────────────────────────────────────────────────────────────────────────────────────
def compare_sentence(a: str, sa: Stats, b: str, sb: Stats) -> str:
    """One plain sentence: `a` beats / loses to `b`, or no difference beyond the seed spread."""
    if not sa[2] or not sb[2]:
        missing = a if not sa[2] else b
        return f"{a} vs {b}: not comparable yet ({missing} has no finished seeds)."
    delta = sa[0] - sb[0]
    if sa[2] < 2 or sb[2] < 2:
        return (f"{a} vs {b}: no difference beyond the seed spread ({sa[0]:.3f} vs {sb[0]:.3f}, Δ {delta:+.3f}; "
                f"one seed cannot show a difference).")
    margin = spread_margin(sa, sb)
    if beyond_spread(sa, sb):
        verb = "beats" if delta > 0 else "loses to"
        return f"{a} {verb} {b}: {sa[0]:.3f} vs {sb[0]:.3f} (Δ {delta:+.3f}, beyond the seed spread ±{margin:.3f})."
    return (f"{a} vs {b}: no difference beyond the seed spread ({sa[0]:.3f} vs {sb[0]:.3f}, Δ {delta:+.3f}, "
            f"spread ±{margin:.3f}).")


def best_sentence(rows: Sequence[dict]) -> str:
    """Names the method with the best final mean accuracy and whether its lead over the runner-up is real."""
    ranked = sorted((r for r in rows if r["final"][2]), key=lambda r: -r["final"][0])
    if not ranked:
        return "No finished cells yet."
    best = ranked[0]
    mean, std, n = best["final"]
    head = f"Best: {best['method']} ({mean:.3f} ± {std:.3f}, {n} seed{'s' if n != 1 else ''})"
    if len(ranked) == 1:
        return head + "; no other method has finished seeds to compare with."
    second = ranked[1]
    lead = mean - second["final"][0]
    if beyond_spread(best["final"], second["final"]):
        return (f"{head}; its lead of {lead:+.3f} over {second['method']} ({second['final'][0]:.3f}) is beyond "
                f"the seed spread (±{spread_margin(best['final'], second['final']):.3f}).")
    return (f"{head}; its lead of {lead:+.3f} over {second['method']} ({second['final'][0]:.3f}) is not beyond "
            f"the seed spread, so these seeds do not separate the two.")


def regime_verdict(rows: Sequence[dict]) -> list[str]:
    """Each method vs each reference present (REFERENCES), each beyond-the-paper method vs the published one, then
    the best-method line."""
    by_method = {r["method"]: r for r in rows}
    pairs = [(r["method"], ref) for ref in REFERENCES if ref in by_method for r in rows]
    pairs += [(ours, published) for ours, published in BEYOND_PAPER.items() if {ours, published} <= set(by_method)]
    lines, said = [], set()
    for a, b in pairs:
        if a != b and frozenset((a, b)) not in said:  # "full vs random" once, not again as "random vs full"
            said.add(frozenset((a, b)))
            lines.append(compare_sentence(a, by_method[a]["final"], b, by_method[b]["final"]))
    return lines + [best_sentence(rows)]


# ── formatting ───────────────────────────────────────────────────────────────────────────────────────────────
def _final_text(stats: Stats) -> str:
    mean, std, n = stats
    return DASH if not n else f"{mean:.3f} ± {std:.3f} ({n})"


def _steps_text(reached: tuple[float | None, int, int]) -> str:
    mean, hit, n = reached
    if not n:
        return DASH
    if mean is None:
        return f"{DASH} ({hit}/{n})"
    number = f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}"
    return f"{number} ({hit}/{n})"


def _pending_text(row: dict) -> str:
    return f"{row['pending']} ({row['running']} running)" if row["running"] else str(row["pending"])


def _threshold_header(rows: Sequence[dict], ref: str) -> str:
    value = rows[0]["thresholds"][ref] if rows else None
    return f"steps to {ref}" + (f" ({value:.3f})" if value is not None else "")


def _shown_shares(rows: Sequence[dict]) -> list[str]:
    """The share columns some method has (corrupted share means nothing in a regime without corruption)."""
    return [k for k in SHARES if any(r["shares"][k] is not None for r in rows)]


def table_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cell rows) of a regime's table, shared by Markdown and HTML."""
    shares = _shown_shares(rows)
    refs = [ref for ref in REFERENCES if any(r["method"] == ref for r in rows)]  # the references this bench ran
    extras = sorted({name for r in rows for name in r.get("extra", {})})
    header = (["method", "final accuracy ± std (seeds)", "Δ vs random"]
              + [f"{name} test (forgetting)" for name in extras]
              + [_threshold_header(rows, ref) for ref in refs]
              + [f"{k} share" for k in shares] + [f"{k} s" for k in TIMES] + ["pending"])
    body = []
    for r in rows:
        delta = DASH if r["delta"] is None or r["method"] == "random" else f"{r['delta']:+.3f}"
        body.append([r["method"], _final_text(r["final"]), delta]
                    + [_final_text(r.get("extra", {}).get(name, (math.nan, 0.0, 0))) for name in extras]
                    + [_steps_text(r["steps_to"][ref]) for ref in refs]
                    + [format_share(r["shares"][k]) for k in shares] + [format_seconds(r["times"][k]) for k in TIMES]
                    + [_pending_text(r)])
    return header, body


def _stats_text(stats: Stats, signed: bool = False) -> str:
    mean, std, n = stats
    return DASH if not n else f"{mean:{'+' if signed else ''}.2f} ± {std:.2f} ({n})"


def diagnostics_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cell rows) of a regime's diagnostics table: mean ± std over seeds (their number)."""
    header = ["method", *(h for _, h in DIAGNOSTIC_COLUMNS), "ρ(score, pass rate)"]
    body = [[r["method"], *(_stats_text(r[k]) for k, _ in DIAGNOSTIC_COLUMNS), _stats_text(r["pass_rate_corr"], True)]
            for r in rows]
    return header, body


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
                      *("| " + " | ".join(cells) + " |" for cells in body)])


def format_bench_table(bench: BenchView) -> str:
    """Terminal summary: per regime, final accuracy, Δ vs random and pending cells per method."""
    lines = []
    width = max(len("method"), *(len(m) for m in bench.methods))
    for name, regime in bench.regimes.items():
        lines += [f"{name}", f"  {'method':<{width}}  {'final accuracy':<22}  {'Δ random':>8}  pending"]
        for r in regime_rows(regime, bench.methods):
            delta = DASH if r["delta"] is None or r["method"] == "random" else f"{r['delta']:+.3f}"
            lines.append(f"  {r['method']:<{width}}  {_final_text(r['final']):<22}  {delta:>8}  {_pending_text(r)}")
    return "\n".join(lines)


# ── figures ──────────────────────────────────────────────────────────────────────────────────────────────────
def method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per method: the colours `plots.py` gives known methods, spare ones for the rest."""
    spare = [c for c in EXTRA_COLOURS + list(METHOD_COLOURS.values())
             if c not in {METHOD_COLOURS.get(m) for m in methods}]
    styles = {}
    for i, m in enumerate(methods):
        colour = METHOD_COLOURS.get(m) or (spare.pop(0) if spare else f"C{i % 10}")
        styles[m] = (colour, MARKERS[i % len(MARKERS)])
    return styles


def time_curve(run: RunView) -> Curve | None:
    """(GRPO steps, cumulative wall time): step 0 at time 0; None when a round lacks `timings.total`."""
    totals = [r.get("timings", {}).get("total") if isinstance(r.get("timings"), dict) else None for r in run.rounds]
    if not totals or not all(is_number(t) for t in totals):
        return None
    return run.curve()[0], [0.0, *np.cumsum(np.array(totals, dtype=float)).tolist()]


def plotted_share_key(regime: RegimeView) -> str | None:
    """The share plotted per round: the regime's own, or for another regime the first that any run records."""
    if regime.kind in PLOTTED_SHARE:
        return PLOTTED_SHARE[regime.kind]
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


def plot_regime(regime: RegimeView, methods: Sequence[str], path: str | os.PathLike, dpi: int = 110) -> Path | None:
    """One PNG (atomically) for a regime: accuracy vs step (±std band), vs wall time, and the regime's share
    per round; panels without data are left out. None when no cell has started."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [m for m in methods if regime.started(m)]
    if not shown:
        return None
    styles = method_styles(methods)
    styles = {m: styles[m] for m in shown}
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
        ax.legend(loc="best", frameon=False, fontsize=9)
    fig.suptitle(f"regime: {regime.name}", fontsize=12)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


# ── the report: blocks rendered to Markdown and to self-contained HTML ───────────────────────────────────────
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
    "of thumb, not a significance test, and one seed cannot show a difference. **Pending** cells have not "
    "finished; running ones appear in the curves (which stop at the last step all seeds reached) but not in "
    "the table."
)

Block = tuple  # ("h1"|"h2"|"p", text) · ("ul", [text]) · ("table", header, rows) · ("img", alt, path)


def _plot_name(regime: str, suffix: str = "") -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", regime) + suffix + ".png"


def _diagnostics_blocks(regime: RegimeView, methods: Sequence[str], score_plot: Path | None) -> list[Block]:
    """The regime's diagnostics table and score-distribution figure ([] for benchmarks recorded without them)."""
    label = diagnostics_label(regime)
    rows = diagnostic_rows(regime, methods, label) if label else []
    blocks: list[Block] = []
    if any(r[k][2] for r in rows for k in (*dict(DIAGNOSTIC_COLUMNS), "pass_rate_corr")):
        blocks += [("p", f"**Selection diagnostics** (label `{label}`: good = {GOOD_MEANS.get(label, 'good')}): "
                         "per finished seed the mean over rounds, then mean ± std over seeds (their number). Among "
                         "the candidates a method could choose: the good share (what a uniform draw gets); the AUC, "
                         "the chance that a good candidate outscores a bad one (0.5 = none); the good share of the "
                         "k best scores and of the selection; and the Spearman ρ of score and pass rate. Uniform "
                         "draws do not rank (— for AUC, top-k and ρ); full selects nothing."),
                   ("table", *diagnostics_cells(rows))]
    if score_plot is not None:
        blocks.append(("img", f"{regime.name}: scores of the eligible candidates, good vs bad", score_plot))
    return blocks


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
    return items


def _progress(bench: BenchView) -> str:
    total = len(bench.regimes) * len(bench.methods) * len(bench.seeds)
    done = sum(len(reg.finished(m)) for reg in bench.regimes.values() for m in bench.methods)
    running = sum(len(reg.running(m)) for reg in bench.regimes.values() for m in bench.methods)
    return f"**cells**: {done} of {total} finished, {running} running, {total - done - running} not started"


def report_blocks(bench: BenchView, plots: dict[str, Path | None],
                  score_plots: dict[str, Path | None] | None = None) -> list[Block]:
    blocks: list[Block] = [("h1", f"Data-regimes benchmark: {bench.path.resolve().name}"),
                           ("ul", _setting(bench) + [_progress(bench)]),
                           ("h2", "How to read this"), ("p", HOW_TO_READ)]
    for name, regime in bench.regimes.items():
        rows = regime_rows(regime, bench.methods)
        header, body = table_cells(rows)
        targets = ", ".join(regime.target_sources) or DASH
        blocks += [("h2", f"Regime: {name}"), ("p", f"Target sources: {targets}."),
                   ("table", header, body), ("ul", regime_verdict(rows))]
        if plots.get(name) is not None:
            blocks.append(("img", f"{name}: accuracy vs step and wall time, selection share per round", plots[name]))
        blocks += _diagnostics_blocks(regime, bench.methods, (score_plots or {}).get(name))
    return blocks


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out += [f"# {block[1]}", ""]
        elif kind == "h2":
            out += [f"## {block[1]}", ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [*(f"- {item}" for item in block[1]), ""]
        elif kind == "table":
            out += [_markdown_table(block[1], block[2]), ""]
        elif kind == "img":
            rel = Path(os.path.relpath(Path(block[2]).resolve(), base.resolve())).as_posix()
            out += [f"![{block[1]}]({rel})", ""]
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then the two Markdown marks the report uses: **bold** and `code`."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
              "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
              "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
              "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
              "img{max-width:100%}p{line-height:1.45}")


def to_html(blocks: Sequence[Block]) -> str:
    """The same blocks as one standalone HTML page: images inlined as base64 data URIs."""
    title = next((b[1] for b in blocks if b[0] == "h1"), "benchmark report")
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
           f"<style>{HTML_STYLE}</style>", "</head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                           for cells in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[2]).read_bytes()).decode("ascii")
            out.append(f"<p><img alt=\"{html.escape(block[1])}\" src=\"data:image/png;base64,{data}\"></p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def bench_report(directory: str | os.PathLike) -> Path:
    """Write `plots/<regime>.png` (and `plots/<regime>-scores.png` where cells have scores files), `report.md`
    and a standalone `report.html` into a benchmark directory (all atomically); returns the path of `report.md`."""
    bench = load_bench(directory)
    plots = {name: plot_regime(regime, bench.methods, bench.path / "plots" / _plot_name(name))
             for name, regime in bench.regimes.items()}
    score_plots = {name: _regime_score_plot(regime, bench.methods, bench.path / "plots" / _plot_name(name, "-scores"))
                   for name, regime in bench.regimes.items()}
    blocks = report_blocks(bench, plots, score_plots)
    md_path = bench.path / "report.md"
    write_text(md_path, to_markdown(blocks, bench.path))
    write_text(bench.path / "report.html", to_html(blocks))
    return md_path
