"""Baselines that need no gradients: pass-rate rules, uniform draws, and plain GRPO on the whole pool."""

from __future__ import annotations

import numpy as np

from .base import Candidates, Method, Scored, SelectionOptions, inconsistent


def random(c: Candidates, opts: SelectionOptions) -> Scored:
    return Scored(np.zeros(len(c)), np.ones(len(c), dtype=bool), rule="uniform")


def accgreedy(c: Candidates, opts: SelectionOptions) -> Scored:
    """Closest pass rate to 0.5 first: ascending |p - 0.5|."""
    return Scored(-np.abs(c.pass_rate - 0.5), np.ones(len(c), dtype=bool))


def passrate_band(c: Candidates, opts: SelectionOptions) -> Scored:
    lo, hi = opts.passrate_band
    return Scored(np.zeros(len(c)), (c.pass_rate >= lo) & (c.pass_rate <= hi), rule="uniform")


def nonzero_variance(c: Candidates, opts: SelectionOptions) -> Scored:
    """DAPO-style dynamic-sampling filter: groups whose rewards disagree."""
    return Scored(np.zeros(len(c)), ~c.zero_variance, rule="uniform")


def consistent(c: Candidates, opts: SelectionOptions) -> Scored:
    """The default's gradient-free checks alone (an ablation of its gradients): uniform among the groups whose
    rewards disagree and rewarded no answer two ways, then proven noise (uniform too)."""
    return Scored(np.where(inconsistent(c), 0.0, 1.0), ~c.zero_variance)


METHODS = [
    Method("random", random, description="uniform from the current chunk, seeded", reads_rollouts=False),
    Method("accgreedy", accgreedy, description="closest pass rate to 0.5 first"),
    Method("passrate-band", passrate_band, description="uniform among a <= p <= b (default 0.2-0.8)"),
    Method("nonzero-variance", nonzero_variance, description="uniform among 0 < p < 1"),
    Method("consistent", consistent, description="uniform among 0 < p < 1 with no answer rewarded two ways, then "
                                                 "those that rewarded one answer two ways (the default's checks "
                                                 "without its gradients)"),
    Method("full", random, description="plain GRPO on the whole pool, no selection", needs_rollouts=False),
]
