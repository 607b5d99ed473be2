"""GradAlign and its gradient-based variants (METHODS.md §1): scores from per-problem policy gradients."""

from __future__ import annotations

import numpy as np

from .base import (Candidates, Method, Scored, SelectionOptions, can_teach, gradient_eligibility, inconsistent,
                   zero_where_zero_variance)

GRADIENTS = frozenset({"gradients", "validation"})
DEGENERATE = 1e-4  # terms equal to this relative precision (identical completions): no evidence, z = 0
CENTRAL_NULL_MASS = 0.6827  # P(|z| < 1) under N(0, 1)


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
    scored = np.isfinite(r)  # a group no reward scored (all NaN) has no mean: its z is 0, without a warning
    a = r - np.where(scored, r, 0.0).sum(1, keepdims=True) / np.maximum(scored.sum(1, keepdims=True), 1)
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


def local_fdr(z: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Efron's local false discovery rate of each z: the probability that its group's rewards are exchangeable noise
    given z, P(null | z) = π0 φ(z) / f(z), capped at 1.

    The null is known by construction: under exchangeable rewards the permutation z has mean 0 and variance 1,
    taken as N(0, 1). f is a Gaussian kernel density of the `among` candidates' z, with Silverman's bandwidth at
    the null's scale, h = 1.06 n^(-1/5); the null is smoothed by the same kernel (N(0, 1 + h²)) so both are
    compared at one resolution. π0, the null share of the round, comes from the central band |z| < 1, where the
    null puts 68.3% of its mass and signal little (capped at 1): a round without noise gets a small π0 and gates
    almost nothing out; a round of coin flips a large one.
    """
    x = z[among]
    n = len(x)
    if n < 2:
        return np.ones_like(z, dtype=float)
    h = 1.06 * n ** -0.2
    f = np.exp(-0.5 * ((z[:, None] - x[None, :]) / h) ** 2).sum(1) / (n * h * np.sqrt(2 * np.pi))
    s2 = 1.0 + h * h
    null = np.exp(-0.5 * z * z / s2) / np.sqrt(2 * np.pi * s2)
    pi0 = min(1.0, float(np.mean(np.abs(x) < 1.0)) / CENTRAL_NULL_MASS)
    return np.clip(pi0 * null / np.maximum(f, 1e-300), 0.0, 1.0)


def signal_gate(c: Candidates, opts: SelectionOptions) -> np.ndarray:
    """The candidates whose rewards follow the validation direction more likely than not: z > 0 and local FDR < ½,
    and no answer of the group rewarded two ways."""
    return _passes(permutation_z(c.completion_rewards, c.completion_dots), gradient_eligibility(c, opts), c)


def _passes(z: np.ndarray, eligible: np.ndarray, c: Candidates) -> np.ndarray:
    return (z > 0) & (local_fdr(z, eligible) < 0.5) & ~inconsistent(c)


def gradalign_lfdr(c: Candidates, opts: SelectionOptions) -> Scored:
    """The dot ⟨g(x), ĝ_V⟩ (first-order gain on the validation loss) among the candidates that pass `signal_gate`;
    then the rest by z (the evidence that their rewards are signal at all); last, the groups whose rewards are
    proven noise (one answer rewarded two ways). z asks whether a group's rewards follow the direction
    (coin flips: z ~ N(0, 1) whatever the gradient's size); the dot asks how much the update helps (the target task
    of a skewed pool, where z ranks every consistent problem alike). Both come from the per-completion terms (the
    dot is their sum), so no per-problem norm is formed: the pass costs what gradalign-z's does. Scores: gated
    2 + dot / max |dot|, the rest z / max |z| (in [-1, 1]), proven noise 3 below that."""
    eligible = gradient_eligibility(c, opts)
    z = permutation_z(c.completion_rewards, c.completion_dots)
    gate = _passes(z, eligible, c)  # signal_gate's test, on the z and eligibility computed here once
    dot_scale = float(np.abs(c.dot_val[eligible]).max(initial=0.0)) or 1.0
    z_scale = float(np.abs(z[eligible]).max(initial=0.0)) or 1.0
    rest = z / z_scale - 3.0 * inconsistent(c)
    return _gradient_score(np.where(gate, 2.0 + c.dot_val / dot_scale, rest), c, opts)


def lfdr_decided_early(c: Candidates, opts: SelectionOptions) -> Scored | None:
    """gradalign-lfdr's choice when no gradient can change it: with at most `keep` eligible candidates that
    rewarded no answer two ways, every one of them is chosen whatever its dot or z (all rank above proven noise),
    then proven noise fills what is left (ordered by z when scored; here in the seeded tie-break's order: under
    rewards that ignore the completions z is noise anyway). Scores: 1 for the consistent, 3 below them for proven
    noise. None when more consistent candidates than `keep` compete (the gradients decide), when none is eligible
    (the round's usual rules apply: an error, or a fallback when the direction is missing too) or when zero-variance
    candidates are eligible (`zero_variance: score-zero`, where they rank by score among the others)."""
    if opts.zero_variance != "exclude" or opts.keep is None:
        return None
    eligible = gradient_eligibility(c, opts)
    if not eligible.any() or int(can_teach(c).sum()) > opts.keep:  # none: the no-direction rules apply
        return None
    return Scored(zero_where_zero_variance(np.where(inconsistent(c), -2.0, 1.0), c), eligible)


METHODS = [
    Method("gradalign", gradalign, GRADIENTS, "top by cos(g(x), g_V)"),
    Method("gradalign-z", gradalign_z, GRADIENTS | {"completions"},
           "top by the z-score of <g(x), ĝ_V> against permutations of the group's rewards: √(k-1)·corr(A, w)"),
    Method("gradalign-lfdr", gradalign_lfdr, GRADIENTS | {"completions"},
           "top by <g(x), ĝ_V> among the candidates whose rewards follow ĝ_V more likely than not (gradalign-z's "
           "z > 0, its local false discovery rate < 1/2 against the permutation null N(0, 1), no answer "
           "rewarded two ways); then the rest by z; groups that rewarded one answer two ways last",
           decide_early=lfdr_decided_early),
    Method("gradalign-zcos", gradalign_zcos, GRADIENTS | {"completions", "norms"},
           "top by min(percentile rank of cos(g(x), g_V), percentile rank of gradalign-z's z): both must agree"),
    Method("gradalign-dot", gradalign_dot, GRADIENTS, "top by <g(x), ĝ_V>"),
    Method("negalign", negalign, GRADIENTS, "bottom by cos(g(x), g_V) (ablation)"),
    Method("norm", norm, frozenset({"gradients"}), "top by ‖g(x)‖ (no validation set)"),
    Method("selfalign", selfalign, frozenset({"gradients", "self"}),
           "top by cos(g(x), pooled gradient of the chunk) (reference code's 'LearnAlign' baseline)"),
    Method("align-x-learnability", align_x_learnability, GRADIENTS, "cos(g(x), g_V) · 4p(1-p)"),
]
