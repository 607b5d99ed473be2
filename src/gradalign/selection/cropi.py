"""CROPI (METHODS.md §3): off-policy influence on several validation sets, fused by reciprocal rank.

Signals: for every candidate, cos(φ(x), φ_v) for each validation set v, where φ is the projected POPI gradient
at the current policy from rollouts sampled once from the behaviour policy, and φ_v the mean projected gradient
of up to 100 of v's problems. Each set ranks the candidates; F(x) = Σ_v 1/rank_v(x) over each set's top N.
Zero-variance candidates have a zero gradient and are never selected.
"""

from __future__ import annotations

import numpy as np

from .base import Candidates, Method, Scored, SelectionOptions
from .fusion import reciprocal_rank_fusion


def cropi(c: Candidates, opts: SelectionOptions) -> Scored:
    eligible = ~c.zero_variance
    if not eligible.any():
        return Scored(np.zeros(len(c)), eligible)
    fused = reciprocal_rank_fusion([c.cos_sets[:, v] for v in range(c.cos_sets.shape[1])], eligible, top=opts.keep)
    return Scored(fused, eligible)


METHODS = [
    Method("cropi", cropi, frozenset({"offline", "validation"}),
           "CROPI: off-policy influence from rollouts collected once, rank fusion over validation sets",
           # the paper's semantics, a random 10% of the coordinates then a random map, with a CountSketch map: as
           # faithful as the paper's Gaussian at d >= 8192 (`gradalign bench fidelity`) at a fraction of its cost
           projection="sparse-countsketch"),
]
