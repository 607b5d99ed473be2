"""The numbers of a benchmark report: statistics over seeds, per method and regime, and the seed-spread rule.

Pure functions of the cells read by `bench_views`; nothing here formats or draws.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from ..curriculum.records import is_number, time_split
from .bench_views import RegimeView
from .cost import reaches
from .summary import RunView, diagnostics_labels, diagnostics_means, round_diagnostics

Stats = tuple[float, float, int]  # (mean, std, n) over seeds
Curve = tuple[Sequence[float], Sequence[float]]  # (x, y) of one seed
# the methods every other one is measured against; nonzero-variance because any rollout-based filter drops the
# zero-variance problems: only the gain over it is a gradient's own
REFERENCES = ("random", "full", "nonzero-variance")
UTILITIES = ("useful", "trivial", "unsolvable")
SHARES = ("target", "corrupted", "trivial", "unsolvable")  # table columns, in order
TIMES = ("rollouts", "scoring", "training", "evaluation", "total")
# The label whose diagnostics tell each regime's story (selection/diagnostics.py: what counts as good).
REGIME_LABEL = {"unreliable-rewards": "corrupted", "imbalance": "target", "low-utility": "utility",
                "mixed": "corrupted", "gsm-symbolic": "corrupted", "smollm2-coin": "corrupted",
                "smollm2-skewed": "target"}
DIAGNOSTIC_COLUMNS = (("eligible_good_share", "eligible good share"), ("auc", "AUC (good vs bad)"),
                      ("top_good_share", "top-k good share"), ("selected_good_share", "selected good share"))


# ── over seeds ───────────────────────────────────────────────────────────────────────────────────────────────
def seed_stats(values: Iterable[float | None]) -> Stats:
    """(mean, std, n) over seeds, ignoring NaN and None; std uses ddof=1 when n > 1, else 0.0 (mean NaN if n=0)."""
    xs = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    xs = xs[~np.isnan(xs)]
    if xs.size == 0:
        return math.nan, 0.0, 0
    return float(xs.mean()), float(xs.std(ddof=1)) if xs.size > 1 else 0.0, int(xs.size)


def steps_to_threshold(steps: Sequence[float], accs: Sequence[float], threshold: float) -> int | None:
    """The first GRPO step (> 0: step 0 is before training) whose accuracy is >= threshold; None if never.

    Ties count as reached (`cost.reaches`: a tolerance, so that float noise in a mean does not decide them).
    """
    for step, acc in zip(steps, accs):
        if step > 0 and reaches(acc, threshold):
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


def paired_stats(a: dict[int, float], b: dict[int, float]) -> Stats:
    """(mean, std, n) of the per-seed differences a − b over the seeds both finished. A seed fixes a cell's data
    (pool, validation and test sets) and starting model for every method, so the paired difference leaves out
    what a seed changes for both alike (an easier test set lifts every arm)."""
    return seed_stats(a[seed] - b[seed] for seed in sorted(set(a) & set(b)))


def paired_margin(d: Stats) -> float:
    """2·std/√n: twice the standard error of the mean per-seed difference."""
    return 2.0 * d[1] / math.sqrt(d[2]) if d[2] else math.nan


def paired_beyond(d: Stats) -> bool:
    """Whether the mean per-seed difference is beyond its spread, |mean| > paired_margin; False under 2 seeds."""
    return d[2] >= 2 and abs(d[0]) > paired_margin(d)


# ── one table row per method ─────────────────────────────────────────────────────────────────────────────────
def final_accuracy(run: RunView) -> float:
    return run.curve()[1][-1]


def final_stats(runs: Sequence[RunView]) -> Stats:
    return seed_stats(final_accuracy(run) for run in runs)


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
    thresholds = reference_thresholds(finals)
    return [_method_row(regime, m, finals[m], thresholds) for m in methods]


def reference_thresholds(finals: dict[str, Stats]) -> dict[str, float | None]:
    """Each reference's mean final accuracy over its finished seeds: the targets others are timed to (None for a
    reference not run or without finished seeds)."""
    return {ref: finals[ref][0] if ref in finals and finals[ref][2] else None for ref in REFERENCES}


def _method_row(regime: RegimeView, method: str, final: Stats, thresholds: dict[str, float | None]) -> dict:
    runs = regime.finished(method)
    running = len(regime.running(method))
    return {
        "method": method, "final": final, "extra": extra_test_stats(runs),
        "by_seed": {seed: final_accuracy(run) for seed, run in regime.finished_by_seed(method).items()},
        "delta": final[0] - thresholds["random"] if thresholds["random"] is not None and final[2] else None,
        "thresholds": thresholds,
        "steps_to": {ref: _steps_reached(runs, thresholds[ref]) for ref in REFERENCES},
        "shares": {k: _mean_share(runs, regime.target_sources, k) for k in SHARES},
        "times": {k: _mean_time(runs, k) for k in TIMES},
        "pending": len(regime.not_started.get(method, [])) + running, "running": running,
    }


# ── selection diagnostics, per method ────────────────────────────────────────────────────────────────────────
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


def has_diagnostics(rows: Sequence[dict]) -> bool:
    """Whether some finished seed of some method recorded any figure of `diagnostic_rows`."""
    return any(r[k][2] for r in rows for k in (*dict(DIAGNOSTIC_COLUMNS), "pass_rate_corr"))
