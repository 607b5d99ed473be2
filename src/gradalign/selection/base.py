"""What a selection method sees about a chunk, and the two generic selectors (top-n and uniform)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Candidates:
    """Signals of the candidates of one round. Gradient fields are None when the method does not need them."""

    ids: list[str]
    pass_rate: np.ndarray  # [n] p(x), mean reward of the rollout group
    zero_variance: np.ndarray  # [n] bool: all rewards equal, so g(x) = 0
    inconsistent: np.ndarray | None = None  # [n] bool: one answer got two different rewards (noise)
    completion_length: np.ndarray | None = None  # [n] mean completion tokens (diagnostics; no method reads it)
    norm: np.ndarray | None = None  # ‖g(x)‖
    cos_val: np.ndarray | None = None  # ⟨g, ĝ_V⟩ / (‖g‖ + ε)
    dot_val: np.ndarray | None = None  # ⟨g, ĝ_V⟩
    cos_self: np.ndarray | None = None  # cosine to the pooled gradient of the chunk itself
    completion_rewards: np.ndarray | None = None  # [n, k] each completion's reward (NaN pads shorter groups)
    completion_dots: np.ndarray | None = None  # [n, k] each completion's term ⟨g_j, ĝ_V⟩ of dot_val (Σ_j = dot_val)
    features: np.ndarray | None = None  # [n, d] unit projected gradients ĝ(x) (zero rows: zero-variance)
    cos_sets: np.ndarray | None = None  # [n, V] cosine of the projected gradient to each validation set's direction

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SelectionOptions:
    """Knobs shared by the methods (the run config carries them)."""

    zero_variance: str = "exclude"  # "exclude" (default) or "score-zero" (reference GradAlign code)
    passrate_band: tuple[float, float] = (0.2, 0.8)
    keep: int | None = None  # how many the selector will keep (rank fusion counts each list's top `keep`)


@dataclass
class Scored:
    """A method's verdict: a score per candidate (higher is better) and which candidates may be chosen."""

    scores: np.ndarray
    eligible: np.ndarray
    rule: str = "top"  # "top": best scores first; "uniform": seeded uniform draw among the eligible


@dataclass
class Method:
    """A registry entry: a name, what signals it needs, and a scoring function."""

    name: str
    score: Callable[[Candidates, SelectionOptions], Scored]
    # subset of {"gradients", "validation", "completions", "self", "features", "warmup", "offline"}: what the
    # selector computes ("completions": per-completion rewards and terms of the validation dot; with it, norms and
    # cosines are only computed when "norms" is also named)
    needs: frozenset[str] = field(default_factory=frozenset)
    description: str = ""
    needs_rollouts: bool = True  # False only for "full", which trains on the whole pool unscored
    reads_rollouts: bool = True  # False for a uniform draw ("random"): its chunk is not rolled out
    # what `projection: auto` means for a method that scores projected features ("features" or "offline")
    projection: str = "khatri-rao-energy"
    # scores from what every candidate has before its gradients (pass rate, zero variance, consistency) when those
    # alone decide which `keep` candidates are chosen, else None: the selector then computes no gradient and
    # measures no validation direction for that selection
    decide_early: Callable[[Candidates, SelectionOptions], Scored | None] | None = None


def select(scored: Scored, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to `n` chosen candidates, best first. Ties are broken by a seeded random order."""
    eligible = np.flatnonzero(scored.eligible)
    order = rng.permutation(eligible)  # random tie-break / uniform draw
    if scored.rule == "top":
        order = order[np.argsort(-scored.scores[order], kind="stable")]
    elif scored.rule != "uniform":
        raise ValueError(f"unknown selection rule '{scored.rule}'")
    return order[:n]


def gradient_eligibility(c: Candidates, opts: SelectionOptions) -> np.ndarray:
    """Zero-variance candidates are excluded by default; the reference code keeps them with score 0."""
    if opts.zero_variance == "exclude":
        return ~c.zero_variance
    if opts.zero_variance == "score-zero":
        return np.ones(len(c), dtype=bool)
    raise ValueError(f"unknown zero_variance option '{opts.zero_variance}' (choose from: exclude, score-zero)")


def inconsistent(c: Candidates) -> np.ndarray:
    """The candidates whose group gave one answer two different rewards (all False when not known)."""
    return np.zeros(len(c), dtype=bool) if c.inconsistent is None else np.asarray(c.inconsistent, dtype=bool)


def can_teach(c: Candidates) -> np.ndarray:
    """The candidates whose group can teach: its rewards vary (a zero-variance group's gradient is 0) and no answer
    was rewarded two ways (proven noise)."""
    return ~np.asarray(c.zero_variance, dtype=bool) & ~inconsistent(c)


def zero_where_zero_variance(scores: np.ndarray, c: Candidates) -> np.ndarray:
    """Score 0 for zero-variance candidates (their gradient is 0; the cosine is 0/ε there anyway)."""
    return np.where(c.zero_variance, 0.0, scores)
