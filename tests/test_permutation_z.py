"""`gradalign-z`: the permutation z-score of GradAlign's dot, against brute force over every permutation of a group's
rewards (an independent computation: no formula shared with the code), and its behaviour on exchangeable rewards."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gradalign.selection import Candidates, SelectionOptions, get_method, select
from gradalign.selection.gradalign import permutation_z


def brute_force_z(rewards: np.ndarray, w: np.ndarray) -> float:
    """(observed - mean) / std of Σ_j (r_πj - r̄) w_j over all k! permutations π."""
    a = rewards - rewards.mean()
    values = np.array([a[list(p)] @ w for p in itertools.permutations(range(len(a)))])
    return float((a @ w - values.mean()) / values.std())


@pytest.mark.parametrize("seed", range(5))
def test_z_equals_brute_force_over_all_permutations(seed):
    g = np.random.default_rng(seed)
    k = int(g.integers(3, 7))
    rewards = g.integers(0, 2, size=(6, k)).astype(float)
    rewards[:, 0], rewards[:, 1] = 0.0, 1.0  # every group disagrees
    w = g.normal(size=(6, k))
    terms = (rewards - rewards.mean(1, keepdims=True)) * w  # what the scorer returns: term_j = A_j w_j
    z = permutation_z(rewards, terms)
    expected = [brute_force_z(rewards[i], w[i]) for i in range(6)]
    np.testing.assert_allclose(z, expected, rtol=1e-9, atol=1e-9)  # float64 throughout: round-off only


def test_exchangeable_rewards_give_standard_normal_z_whatever_the_gradient_size():
    """Coin-flip rewards ignore the completions: z ~ N(0, 1) approximately, even when the terms are huge, while a
    problem whose rewards follow w scores high."""
    g = np.random.default_rng(0)
    n, k = 4000, 8
    rewards = g.integers(0, 2, size=(n, k)).astype(float)
    keep = (rewards.min(1) != rewards.max(1))
    rewards = rewards[keep]
    w = g.normal(size=rewards.shape) * 1e3
    z = permutation_z(rewards, (rewards - rewards.mean(1, keepdims=True)) * w)
    # mean and std of ~3900 draws: standard errors 0.016 and ~0.012; bounds at ~6 standard errors
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.08
    aligned = permutation_z(rewards, (rewards - rewards.mean(1, keepdims=True)) * (rewards + 0.1 * g.normal(size=rewards.shape)))
    assert np.median(aligned) > 1.5


def test_identical_completions_give_no_evidence_and_padding_is_ignored():
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, np.nan]])
    w = np.array([[2.0, 2.0, 2.0 * (1 + 1e-7), 2.0], [1.0, -1.0, -1.0, np.nan]])
    terms = (rewards - np.nanmean(rewards, 1, keepdims=True)) * w
    z = permutation_z(rewards, terms)
    assert z[0] == 0.0  # w equal to round-off: the z of noise would be arbitrary
    assert z[1] == pytest.approx(brute_force_z(rewards[1, :3], w[1, :3]))


def test_method_ranks_by_z_and_excludes_zero_variance():
    rewards = np.array([[1, 0, 0, 1], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=float)
    w = np.array([[3, -1, -2, 2], [-3, 1, -1, 2], [0.5, 4, 0, 1], [9, 9, 9, 9]], dtype=float)
    terms = (rewards - rewards.mean(1, keepdims=True)) * w
    c = Candidates(ids=list("abcd"), pass_rate=rewards.mean(1), zero_variance=np.array([False, False, False, True]),
                   cos_val=np.array([0.1, 0.9, 0.2, 0.0]), dot_val=terms.sum(1), norm=np.ones(4),
                   completion_rewards=rewards, completion_dots=terms)
    scored = get_method("gradalign-z").score(c, SelectionOptions())
    expected = permutation_z(rewards, terms)
    order = sorted(range(3), key=lambda i: -expected[i])
    assert select(scored, 4, np.random.default_rng(0)).tolist() == order
    assert scored.scores[3] == 0.0 and not scored.eligible[3]


def test_zcos_needs_both_signals_to_rank_high():
    """Four candidates: high cos and high z; high cos, z noise; low cos, high z; both low. Only the first ranks top;
    the ranks are written out by hand (percentiles among the 4 eligible: 0.25, 0.5, 0.75, 1)."""
    g = np.random.default_rng(0)
    k = 8
    rewards = np.tile([1.0, 0.0], (5, k // 2))
    a = rewards - rewards.mean(1, keepdims=True)
    w = np.stack([a[0] * 3 + 0.1 * g.normal(size=k),  # rewards follow w: z high
                  g.normal(size=k),  # unrelated: z near 0
                  a[2] * 2 + 0.1 * g.normal(size=k),
                  -a[3] + 0.1 * g.normal(size=k),  # rewards against w: z very low
                  np.ones(k)])
    terms = a * w
    z = permutation_z(rewards, terms)
    assert z[0] > z[2] > z[1] > z[3]  # as built
    c = Candidates(ids=list("abcde"), pass_rate=np.full(5, 0.5), zero_variance=np.array([False] * 4 + [True]),
                   cos_val=np.array([0.9, 0.8, 0.1, 0.0, 0.99]), dot_val=terms.sum(1), norm=np.ones(5),
                   completion_rewards=rewards, completion_dots=terms)
    scored = get_method("gradalign-zcos").score(c, SelectionOptions())
    # percentile ranks: cos (a 1.0, b 0.75, c 0.5, d 0.25); z (a 1.0, c 0.75, b 0.5, d 0.25); min: a 1, b .5, c .5, d .25
    order = select(scored, 5, np.random.default_rng(0)).tolist()
    assert order[0] == 0 and order[-1] == 3 and set(order[1:3]) == {1, 2} and 4 not in order
    assert get_method("gradalign-zcos").needs >= {"completions", "norms", "validation"}
