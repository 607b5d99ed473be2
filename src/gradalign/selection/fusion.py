"""Reciprocal-rank fusion (CROPI, METHODS.md §3 step 5): several score lists become one by summing 1/rank.

Each score list v (e.g. the influence on one validation set) ranks the eligible candidates from 1 (the highest
score) and F(x) = Σ_v 1/rank_v(x). With `top = N`, a list only votes for its own top N ("for each v take the
top N by score_v"), so a candidate that is middling everywhere does not beat one that is best somewhere.
"""

from __future__ import annotations

import numpy as np


def _validated(scores: list[np.ndarray], eligible: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Scores as float64 [n] arrays and eligible as bool [n]; one-line ValueError on bad shapes or NaN."""
    eligible = np.asarray(eligible)
    if eligible.ndim != 1 or eligible.dtype != np.bool_:
        raise ValueError(f"eligible must be a 1-D bool array, got {eligible.dtype} of shape {list(eligible.shape)}")
    if len(scores) == 0:
        raise ValueError("rank fusion needs at least one score list")
    out = []
    for v, s in enumerate(scores):
        s = np.asarray(s, dtype=np.float64)
        if s.shape != eligible.shape:
            raise ValueError(f"score list {v} has shape {list(s.shape)}, expected [{eligible.shape[0]}] like eligible")
        if np.isnan(s[eligible]).any():
            raise ValueError(f"score list {v} has NaN scores for eligible candidates")
        out.append(s)
    return out, eligible


def per_set_ranks(scores: list[np.ndarray], eligible: np.ndarray) -> np.ndarray:
    """Rank of every eligible candidate in every list: int64 [V, n], 1 = highest score, 0 = ineligible.

    Ties are broken by candidate index (the lower index ranks first): the sort is stable.
    """
    scores, eligible = _validated(scores, eligible)
    idx = np.flatnonzero(eligible)
    ranks = np.zeros((len(scores), eligible.shape[0]), dtype=np.int64)
    for v, s in enumerate(scores):
        order = idx[np.argsort(-s[idx], kind="stable")]
        ranks[v, order] = np.arange(1, len(order) + 1)
    return ranks


def reciprocal_rank_fusion(scores: list[np.ndarray], eligible: np.ndarray, top: int | None = None) -> np.ndarray:
    """F(x) = Σ_v 1/rank_v(x) as float64 [n] (higher is better); ineligible candidates get 0.

    With `top`, only ranks <= top contribute to a list's term (the others add 0 for that list).
    """
    if top is not None and int(top) < 1:
        raise ValueError(f"top must be >= 1 (or None for all candidates), got {top}")
    ranks = per_set_ranks(scores, eligible)
    voting = ranks > 0 if top is None else (ranks > 0) & (ranks <= int(top))
    terms = np.where(voting, 1.0 / np.maximum(ranks, 1), 0.0)
    return terms.sum(axis=0)


__all__ = ["reciprocal_rank_fusion", "per_set_ranks"]
