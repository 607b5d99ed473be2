"""GradAlign and its gradient-based variants (METHODS.md §1): scores from per-problem policy gradients."""

from __future__ import annotations

import numpy as np

from .base import Candidates, Method, Scored, SelectionOptions, gradient_eligibility, zero_where_zero_variance

GRADIENTS = frozenset({"gradients", "validation"})
DEGENERATE = 1e-4  # terms equal to this relative precision (identical completions): no evidence, z = 0


def _gradient_score(values: np.ndarray, c: Candidates, opts: SelectionOptions) -> Scored:
    return Scored(zero_where_zero_variance(values, c), gradient_eligibility(c, opts))


def gradalign(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.cos_val, c, opts)


def gradalign_dot(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.dot_val, c, opts)


def negalign(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(-c.cos_val, c, opts)


def norm(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.norm, c, opts)


def selfalign(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.cos_self, c, opts)


def align_x_learnability(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(c.cos_val * 4 * c.pass_rate * (1 - c.pass_rate), c, opts)


def permutation_z(rewards: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """z-score of each problem's dot ⟨g, ĝ_V⟩ = Σ_j A_j w_j against random permutations of its group's rewards.

    With A_j = r_j - r̄ and w_j = term_j / A_j (each completion's alignment, up to the problem's constant scale),
    a permutation π gives Σ_j A_πj w_j with mean 0 and variance Σ A² · Σ (w - w̄)² / (k - 1), so
    z = √(k-1) · corr(A, w). Rewards that ignore the completions (coin flips) are exchangeable with their
    permutations: their z is noise whatever the gradient's size. Completions with A_j = 0 (graded rewards at the
    mean) carry no w_j and are left out, so z is exact for binary rewards. Rows of NaN are padding.
    """
    r = np.asarray(rewards, dtype=float)
    a = r - np.nanmean(r, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(np.abs(a) > 1e-12, terms / a, np.nan)
    live = np.isfinite(w)
    k = live.sum(1)
    w_bar = (np.where(live, w, 0.0).sum(1) / np.maximum(k, 1))[:, None]
    spread = np.where(live, (w - w_bar) ** 2, 0.0).sum(1)
    scale = np.where(live, np.abs(w), 0.0).max(1, initial=0.0)
    dot = np.where(live, a * w, 0.0).sum(1)
    var = np.where(live, a ** 2, 0.0).sum(1) * spread / np.maximum(k - 1, 1)
    ok = (k >= 2) & (spread > (DEGENERATE * scale) ** 2 * np.maximum(k, 1))
    return np.where(ok, dot / np.sqrt(np.where(ok, var, 1.0)), 0.0)


def gradalign_z(c: Candidates, opts: SelectionOptions) -> Scored:
    return _gradient_score(permutation_z(c.completion_rewards, c.completion_dots), c, opts)


def percentile_ranks(x: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Rank of each value among the `among` candidates, scaled to (0, 1] (1 = best; ties share the lower rank)."""
    ref = np.sort(x[among])
    return np.searchsorted(ref, x, side="left") / max(len(ref), 1) + 1 / max(len(ref), 1)


def gradalign_zcos(c: Candidates, opts: SelectionOptions) -> Scored:
    """Both signals must rank high: min of the percentile ranks of cos and z among the eligible candidates (z tells
    rewards that follow the validation direction from coin flips; cos tells the direction itself, e.g. the target
    task of an imbalanced pool). Ties go to the larger of the two."""
    eligible = gradient_eligibility(c, opts)
    z = permutation_z(c.completion_rewards, c.completion_dots)
    a, b = percentile_ranks(c.cos_val, eligible), percentile_ranks(z, eligible)
    return _gradient_score(np.minimum(a, b) + 1e-9 * np.maximum(a, b), c, opts)


METHODS = [
    Method("gradalign", gradalign, GRADIENTS, "top by cos(g(x), g_V)"),
    Method("gradalign-z", gradalign_z, GRADIENTS | {"completions"},
           "top by the z-score of <g(x), ĝ_V> against permutations of the group's rewards: √(k-1)·corr(A, w)"),
    Method("gradalign-zcos", gradalign_zcos, GRADIENTS | {"completions", "norms"},
           "top by min(percentile rank of cos(g(x), g_V), percentile rank of gradalign-z's z): both must agree"),
    Method("gradalign-dot", gradalign_dot, GRADIENTS, "top by <g(x), ĝ_V>"),
    Method("negalign", negalign, GRADIENTS, "bottom by cos(g(x), g_V) (ablation)"),
    Method("norm", norm, frozenset({"gradients"}), "top by ‖g(x)‖ (no validation set)"),
    Method("selfalign", selfalign, frozenset({"gradients", "self"}),
           "top by cos(g(x), pooled gradient of the chunk) (reference code's 'LearnAlign' baseline)"),
    Method("align-x-learnability", align_x_learnability, GRADIENTS, "cos(g(x), g_V) · 4p(1-p)"),
]
