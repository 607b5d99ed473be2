"""The colour and marker each method is drawn with: one rule for every figure, so a method looks the same in all."""

from __future__ import annotations

from typing import Sequence

# Stable colours for the methods people compare most; others take the next spare colour.
METHOD_COLOURS = {"gradalign": "#1f77b4", "random": "#7f7f7f", "accgreedy": "#d62728", "full": "#2ca02c",
                  "learnalign": "#9467bd", "cropi": "#ff7f0e", "passrate-band": "#8c564b"}
EXTRA_COLOURS = ["#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def method_styles(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(colour, marker) per entry of `methods`, in order. A known method gets its own colour; any other method, and
    a method's second entry (two runs of one method must stay apart), the next spare colour no method present owns;
    once the spares run out, matplotlib's `Cn` cycle."""
    owned = {METHOD_COLOURS.get(m) for m in methods}
    spare = [c for c in EXTRA_COLOURS + list(METHOD_COLOURS.values()) if c not in owned]
    taken: set[str] = set()
    styles = []
    for i, method in enumerate(methods):
        colour = METHOD_COLOURS.get(method)
        if colour is None or colour in taken:
            colour = spare.pop(0) if spare else f"C{i % 10}"
        taken.add(colour)
        styles.append((colour, MARKERS[i % len(MARKERS)]))
    return styles
