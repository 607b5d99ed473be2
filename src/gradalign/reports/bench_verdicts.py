"""The verdicts of a benchmark report: plain sentences saying which method beats which beyond the seed spread, on
final accuracy and on time to accuracy."""

from __future__ import annotations

from typing import Sequence

from .bench_stats import REFERENCES, Stats, beyond_spread, paired_beyond, paired_margin, paired_stats, spread_margin
from .cost import AXES
from .summary import format_count, format_seconds

# our methods, each also measured against the published one
BEYOND_PAPER = {"gradalign-lfdr": "gradalign", "gradalign-z": "gradalign", "gradalign-zcos": "gradalign"}


def compare_sentence(a: str, sa: Stats, b: str, sb: Stats, paired: Stats | None = None) -> str:
    """One plain sentence: `a` beats / loses to `b`, or no difference beyond the seed spread; then, given the
    per-seed differences over the seeds both finished (`paired_stats`), the same judgement on them."""
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
        head = f"{a} {verb} {b}: {sa[0]:.3f} vs {sb[0]:.3f} (Δ {delta:+.3f}, beyond the seed spread ±{margin:.3f})."
    else:
        head = (f"{a} vs {b}: no difference beyond the seed spread ({sa[0]:.3f} vs {sb[0]:.3f}, Δ {delta:+.3f}, "
                f"spread ±{margin:.3f}).")
    return head + (paired_clause(paired) if paired is not None and paired[2] >= 2 else "")


def paired_clause(d: Stats) -> str:
    """The per-seed differences' judgement, as a sentence to follow `compare_sentence`'s."""
    judged = "beyond" if paired_beyond(d) else "within"
    return (f" Seed by seed ({d[2]} seeds both finished, each on its own data): Δ {d[0]:+.3f} ± {d[1]:.3f}, "
            f"{judged} its spread ±{paired_margin(d):.3f}.")


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
            ra, rb = by_method[a], by_method[b]
            paired = paired_stats(ra["by_seed"], rb["by_seed"]) if "by_seed" in ra and "by_seed" in rb else None
            lines.append(compare_sentence(a, ra["final"], b, rb["final"], paired))
    return lines + [best_sentence(rows)]


# ── time to accuracy (bench_cost.time_to_accuracy) ───────────────────────────────────────────────────────────
def _cost_text(axis: str, value: float) -> str:
    return f"{format_seconds(value)} s" if axis == "seconds" else f"{format_count(value)} tokens"


def _share_of(cost: Stats, total: Stats) -> str:
    """A crossing's cost as a share of a reference's mean total cost, "41% ± 6%" ("41%" for one seed: no spread)."""
    share = f"{100 * cost[0] / total[0]:.0f}%"
    return share + (f" ± {100 * cost[1] / total[0]:.0f}%" if cost[2] > 1 else "")


def _cost_judgement(cost: Stats, total: Stats, ref: str) -> str:
    """Whether reaching the target cost less or more than the reference's whole run, beyond the seed spread."""
    if cost[2] < 2 or total[2] < 2:
        return "one seed cannot show a difference"
    if beyond_spread(cost, total):
        return f"{'less' if cost[0] < total[0] else 'more'} than {ref}'s, beyond the seed spread"
    return f"within the seed spread of {ref}'s"


def _comparable_axes(to: dict, totals: dict) -> list[str]:
    """The cost axes on which a method has finished seeds and the reference a positive total cost."""
    return [axis for axis in AXES if to[axis]["seeds"] and totals[axis][2] and totals[axis][0] > 0]


def reach_sentence(method: str, ref: str, target: float, to: dict, totals: dict) -> str | None:
    """How much of `ref`'s total cost `method` needed to reach `ref`'s final accuracy for good, per cost axis,
    judged beyond the seed spread only when every seed reached it (the others have no cost to average); None
    without finished seeds or when no seed reached it (`never_sentence` names those)."""
    axes = _comparable_axes(to, totals)
    if not axes or not to[axes[0]]["reached"]:
        return None
    reached, seeds = to[axes[0]]["reached"], to[axes[0]]["seeds"]
    head = f"{method} reaches {ref}'s final accuracy ({target:.3f}) for good in {reached}/{seeds} seeds"
    clauses = []
    for axis in axes:
        c = to[axis]
        if not c["reached"]:
            continue
        text = f"{_share_of(c['cost'], totals[axis])} of {ref}'s {AXES[axis]}"
        if (c["reached"], c["seeds"]) != (reached, seeds):
            text += f" ({c['reached']}/{c['seeds']} seeds)"
        if reached == seeds:
            text += f" ({_cost_judgement(c['cost'], totals[axis], ref)})"
        clauses.append(text)
    if reached == seeds:
        return f"{head}, at {' and '.join(clauses)}."
    missed = seeds - reached
    return (f"{head} only, at {' and '.join(clauses)} where it does; {missed} seed{'s' if missed > 1 else ''} never "
            f"stay{'s' if missed == 1 else ''} at or above it, so no verdict on its cost.")


def never_sentence(ref: str, target: float, never: Sequence[tuple[str, int]]) -> str | None:
    """One sentence naming the methods, each with its number of finished seeds, of which no seed reached `ref`'s
    final accuracy for good."""
    if not never:
        return None
    names = ", ".join(f"{method} (0/{seeds} seeds)" for method, seeds in never)
    return f"Never at or above {ref}'s final accuracy ({target:.3f}) to the end: {names}."


def budget_sentence(method: str, ref: str, at: dict, budget: dict, final: Stats, own: dict | None = None
                    ) -> str | None:
    """`method`'s accuracy at `ref`'s mean total cost, per cost axis, against `ref`'s final accuracy; then, given
    `own` (axis → `bench_cost.paired_at_budget`), the same seed by seed; None without anything to compare."""
    axes = [axis for axis in AXES if budget[axis] is not None and at[axis][2]]
    if not axes or not final[2]:
        return None
    clauses = []
    for axis in axes:
        s = at[axis]
        delta = s[0] - final[0]
        if s[2] < 2 or final[2] < 2:
            judged = "one seed cannot show a difference"
        elif beyond_spread(s, final):
            judged = f"{'above' if delta > 0 else 'below'} it beyond the seed spread ±{spread_margin(s, final):.3f}"
        else:
            judged = f"no difference beyond the seed spread ±{spread_margin(s, final):.3f}"
        clauses.append(f"{s[0]:.3f} ± {s[1]:.3f} by {AXES[axis]} (Δ {delta:+.3f}, {judged})")
    costs = ", ".join(_cost_text(axis, budget[axis]) for axis in axes)
    return (f"{method} at {ref}'s total cost ({costs}) vs {ref}'s final accuracy ({final[0]:.3f} ± {final[1]:.3f}): "
            + "; ".join(clauses) + "." + own_budget_clause(ref, own or {}))


def own_budget_clause(ref: str, own: dict) -> str:
    """The seed-by-seed reading of `budget_sentence`: per axis, the mean ± std of (accuracy at the seed's own
    `ref` total cost − that seed's `ref` final) and whether it is beyond its spread."""
    judged = {axis: d for axis, d in own.items() if d[2] >= 2}
    if not judged:
        return ""
    parts = [f"{AXES[axis]} Δ {d[0]:+.3f} ± {d[1]:.3f}, {'beyond' if paired_beyond(d) else 'within'} its spread "
             f"±{paired_margin(d):.3f}" for axis, d in judged.items()]
    n = max(d[2] for d in judged.values())
    return (f" Seed by seed ({n} seeds both finished), at each seed's own {ref} total cost against that seed's "
            f"{ref} final: " + "; ".join(parts) + ".")


def time_to_accuracy_verdict(tta: dict) -> list[str]:
    """Per reference target, each other method's cost to reach it; then each method's accuracy at each budget
    method's total cost (full's, and plain GRPO run longer where it ran)."""
    lines = []
    for ref, target in tta["targets"].items():
        never = []
        for row in (r for r in tta["rows"] if r["method"] != ref):
            to, totals = row["to"][ref], tta["totals"][ref]
            axes = _comparable_axes(to, totals)
            if axes and not to[axes[0]]["reached"]:
                never.append((row["method"], to[axes[0]]["seeds"]))
            lines.append(reach_sentence(row["method"], ref, target, to, totals))
        lines.append(never_sentence(ref, target, never))
    for budget, costs in tta["budgets"].items():
        for row in (r for r in tta["rows"] if r["method"] != budget):
            lines.append(budget_sentence(row["method"], budget, row["at_budget"][budget], costs,
                                         tta["budget_finals"][budget], row["at_own_budget"][budget]))
    return [line for line in lines if line]
