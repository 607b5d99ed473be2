"""LearnAlign (METHODS.md §2) and its ablations: learnable and representative problems, no validation set.

Signals: p(x) from k rollouts of the warmed-up policy θ_s, V(x) = p(1 - p), and ĝ(x) the unit projected GRPO
gradient (with the KL term) at θ_s. The pairwise score S_ij = V_i V_j cos(ĝ_i, ĝ_j) is ranked by its row mean,
(1/n) Σ_j S_ij = V_i ⟨ĝ_i, m⟩ with m = (1/n) Σ_j V_j ĝ_j: O(n·d), never an n×n matrix.
"""

from __future__ import annotations

import numpy as np

from .base import Candidates, Method, Scored, SelectionOptions, gradient_eligibility

FEATURES = frozenset({"features", "warmup"})


def learnability(c: Candidates) -> np.ndarray:
    """V(x) = p(1 - p) ∈ [0, 0.25]: zero for groups that all pass or all fail."""
    return c.pass_rate * (1 - c.pass_rate)


def representativeness(c: Candidates) -> np.ndarray:
    """V_i ⟨ĝ_i, m⟩, the row mean of the pairwise matrix V_i V_j cos(ĝ_i, ĝ_j) (diagonal included)."""
    v = learnability(c)
    m = (v[:, None] * c.features).sum(0) / len(c)
    return v * (c.features @ m)


def learnalign(c: Candidates, opts: SelectionOptions) -> Scored:
    return Scored(representativeness(c), gradient_eligibility(c, opts))


def learnalign_no_v(c: Candidates, opts: SelectionOptions) -> Scored:
    """Ablation without V: cos(ĝ_i, pool direction), the direction being the mean unit feature."""
    m = c.features.mean(0)
    return Scored(c.features @ (m / (np.linalg.norm(m) + 1e-12)), gradient_eligibility(c, opts))


def top_learnability(c: Candidates, opts: SelectionOptions) -> Scored:
    return Scored(learnability(c), gradient_eligibility(c, opts))


METHODS = [
    Method("learnalign", learnalign, FEATURES, "LearnAlign: top by V_i <ĝ_i, m>, m the V-weighted mean unit "
           "feature (warm-up, no validation set)"),
    Method("learnalign-no-v", learnalign_no_v, FEATURES, "LearnAlign ablation: cos(ĝ_i, mean unit feature), no V"),
    Method("learnalign-no-warmup", learnalign, frozenset({"features"}),
           "LearnAlign ablation: features from the current policy, no warm-up"),
    Method("learnability", top_learnability, description="top by V = p(1-p) (LearnAlign's learnability alone)"),
]
