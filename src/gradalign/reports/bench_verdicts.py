"""The verdicts of a benchmark report: plain sentences saying which method beats which beyond the seed spread."""

from __future__ import annotations

from typing import Sequence

from .bench_stats import REFERENCES, Stats, beyond_spread, spread_margin

# our methods, each also measured against the published one
BEYOND_PAPER = {"gradalign-z": "gradalign", "gradalign-zcos": "gradalign"}


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
