"""The cost side of a benchmark report, per regime and over seeds: what each method spent (the ledger and the
wall-time split) and time to accuracy, on both cost axes (`cost.AXES`: wall time without evaluation, generated
tokens with selection's included):
- the cost at which a method reaches a reference's final accuracy for good (`cost.lasting_crossing`), per seed and
  on the seed-mean curve, with how many seeds reached it;
- its accuracy at full's mean total cost (`cost.accuracy_at_cost`), and at that of plain GRPO run longer (`full@xN`
  arms, `bench regimes`) where one ran: the equal-cost reading for a method whose steps cost more than full's.

Pure functions of the finished cells, like `bench_stats`; nothing here formats or draws.
"""

from __future__ import annotations

from typing import Sequence

from ..curriculum.records import time_split
from .bench_stats import REFERENCES, Stats, final_accuracy, final_stats, mean_curve, paired_stats, seed_stats
from .bench_views import RegimeView, rounds_multiple
from .cost import AXES, accuracy_at_cost, cost_curve, lasting_crossing, run_cost
from .summary import RunView

LEDGER_STATS = ("selection_per_training", "selection_tokens", "training_tokens", "fb_selection", "fb_training")
TIME_STATS = ("rollouts", "scoring", "training")
# whose final accuracy is timed
TARGETS = tuple(ref for ref in ("full", "random", "nonzero-variance") if ref in REFERENCES)
BUDGET = "full"  # the method at whose total cost every method's accuracy is read

SeedCurve = tuple[list[int], list[float], list[float]]  # (GRPO steps, cumulative cost, test accuracy)


# ── what each method spent ───────────────────────────────────────────────────────────────────────────────────
def cost_rows(regime: RegimeView, methods: Sequence[str]) -> list[dict]:
    """One row per method: over its finished seeds, the Stats of each LEDGER_STATS figure (seeds recorded before
    the ledger left out) and of the wall-time split's TIME_STATS."""
    rows = []
    for m in methods:
        runs = regime.finished(m)
        costs = [run_cost(run.rounds) for run in runs]
        rows.append({"method": m, "seeds": len(runs),
                     **{k: seed_stats(c[k] if c else None for c in costs) for k in LEDGER_STATS},
                     **{f"time_{k}": seed_stats(time_split(run.rounds)[k] for run in runs) for k in TIME_STATS}})
    return rows


# ── time to accuracy ─────────────────────────────────────────────────────────────────────────────────────────
def seed_curves(runs: Sequence[RunView], axis: str) -> list[SeedCurve]:
    """Each run's accuracy curve with its cumulative cost on `axis`; runs that cannot count it are left out."""
    out = []
    for run in runs:
        costs = cost_curve(run.rounds, axis)
        if costs is not None:
            steps, accs = run.curve()
            out.append((steps, costs, accs))
    return out


def mean_cost_curve(curves: Sequence[SeedCurve]) -> tuple[list[float], list[float]]:
    """(mean cumulative cost, mean accuracy) per step over seeds, at the steps every seed has."""
    _, costs, _ = mean_curve([(steps, c) for steps, c, _ in curves])
    _, accs, _ = mean_curve([(steps, a) for steps, _, a in curves])
    return costs.tolist(), accs.tolist()


def crossing(curves: Sequence[SeedCurve], target: float) -> dict:
    """Cost to reach `target` for good: `cost` the Stats over the seeds that reached it (the others have no cost),
    `reached` / `seeds` how many did, `on_mean` the cost where the seed-mean curve reaches it (None if it does
    not)."""
    costs = [c[i] for _, c, a in curves if (i := lasting_crossing(a, target)) is not None]
    mean_costs, mean_accs = mean_cost_curve(curves)
    i = lasting_crossing(mean_accs, target)
    return {"cost": seed_stats(costs), "reached": len(costs), "seeds": len(curves),
            "on_mean": mean_costs[i] if i is not None else None}


def total_cost(curves: Sequence[SeedCurve]) -> Stats:
    """Stats over seeds of the whole run's cost."""
    return seed_stats(c[-1] for _, c, _ in curves)


def accuracy_at(curves: Sequence[SeedCurve], budget: float | None) -> Stats:
    """Stats over seeds of the accuracy at cumulative cost `budget` (a seed that ended cheaper: its final)."""
    if budget is None:
        return seed_stats([])
    return seed_stats(accuracy_at_cost(c, a, budget) for _, c, a in curves)


def longer_references(methods: Sequence[str]) -> list[str]:
    """The `full@xN` arms among `methods` (N >= 2: plain GRPO run N times as long), shortest first."""
    longer = [m for m in methods if m.partition("@")[0] == BUDGET and rounds_multiple(m)]
    return sorted(longer, key=rounds_multiple)


def paired_at_budget(regime: RegimeView, method: str, axis: str, budget: str = BUDGET) -> Stats:
    """Seed by seed: `method`'s accuracy at the same seed's `budget` total cost minus that seed's `budget` final
    accuracy (`paired_stats` over the seeds both finished and can count `axis`): whether, on its own data, a
    method had `budget`'s result by the time `budget` had spent its whole run."""
    ref, runs = regime.finished_by_seed(budget), regime.finished_by_seed(method)
    at, finals = {}, {}
    for seed in set(ref) & set(runs):
        ref_costs, costs = cost_curve(ref[seed].rounds, axis), cost_curve(runs[seed].rounds, axis)
        if ref_costs is not None and costs is not None:
            at[seed] = accuracy_at_cost(costs, runs[seed].curve()[1], ref_costs[-1])
            finals[seed] = final_accuracy(ref[seed])
    return paired_stats(at, finals)


def time_to_accuracy(regime: RegimeView, methods: Sequence[str]) -> dict:
    """The regime's time to accuracy over finished seeds:
    - `targets`: ref → its seed-mean final accuracy (TARGETS and the `full@xN` arms, with finished seeds only);
    - `totals`: ref → axis → Stats of its total cost (the yardstick of "X% of full's wall time");
    - `budgets`: budget → axis → its mean total cost (None without finished seeds), for BUDGET and the `full@xN`
      arms; `budget_finals`: budget → its final accuracy Stats;
    - `rows`: per method, `to[ref][axis]` (`crossing`), `at_budget[budget][axis]` (accuracy Stats at the budget)
      and `at_own_budget[budget][axis]` (`paired_at_budget`)."""
    longer = longer_references(methods)
    refs = [ref for ref in TARGETS if ref in methods] + longer
    finals = {ref: final_stats(regime.finished(ref)) for ref in refs}
    targets = {ref: finals[ref][0] for ref in refs if finals[ref][2]}
    curves = {m: {axis: seed_curves(regime.finished(m), axis) for axis in AXES} for m in methods}
    totals = {ref: {axis: total_cost(curves[ref][axis]) for axis in AXES} for ref in targets}
    budgets = {b: {axis: totals[b][axis][0] if b in totals and totals[b][axis][2] else None for axis in AXES}
               for b in [BUDGET, *longer]}
    rows = [{"method": m, "seeds": len(regime.finished(m)),
             "to": {ref: {axis: crossing(curves[m][axis], t) for axis in AXES} for ref, t in targets.items()},
             "at_budget": {b: {axis: accuracy_at(curves[m][axis], cost[axis]) for axis in AXES}
                           for b, cost in budgets.items()},
             "at_own_budget": {b: {axis: paired_at_budget(regime, m, axis, b) for axis in AXES} for b in budgets}}
            for m in methods]
    return {"targets": targets, "totals": totals, "budgets": budgets,
            "budget_finals": {b: finals.get(b, seed_stats([])) for b in budgets}, "rows": rows}
