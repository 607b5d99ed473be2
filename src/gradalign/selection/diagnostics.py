"""How well a round's scores separate good problems from bad: the figures that explain a method's gain.

The selection methods never see a problem's labels; only these diagnostics read them (built-in scenarios and any
pool that carries them). Three labels, each with what counts as *good*:

    corrupted   good = clean reward (metadata "corrupted" is false)          unreliable rewards
    target      good = source among the validation set's sources             imbalance
    utility     good = metadata "utility" == "useful"                         low utility

Per label, among the *eligible* candidates (those the method could choose): the AUC of the scores for good vs bad
(the probability that a random good candidate outscores a random bad one; ties count half), the good share of the
top-k by score (k = the number kept) and of what was really selected, and the pass rates of the selected good and
bad problems. Label-free figures need no labels: score spread, share of positive scores, Spearman correlation of
the score with the pass rate and with the mean completion length.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .. import fileio
from ..data.problem import Problem

SCORE_COLUMNS = ["id", "pass_rate", "learnability", "completion_length", "zero_variance", "score", "rank",
                 "selected", "source", "corrupted", "utility"]


LABELS = ("corrupted", "target", "utility")  # the labels a pool may carry, in the order reports show them


def is_good(label: str, corrupted: bool, source: str, utility: str | None, validation_sources: set[str]) -> bool:
    """The one rule for what counts as good under each label (module docstring); reports apply it to the scores
    files' rows, `good_labels` to problems."""
    if label == "corrupted":
        return not corrupted
    if label == "target":
        return source in validation_sources
    return utility == "useful"


def good_labels(problems: list[Problem], validation_sources: set[str]) -> dict[str, np.ndarray]:
    """{label: bool array, True = good} for every label the problems carry with both values possible."""
    sources = {p.source for p in problems}
    carried = {"corrupted": any("corrupted" in p.metadata for p in problems),
               "target": bool(validation_sources and sources - validation_sources and sources & validation_sources),
               "utility": any("utility" in p.metadata for p in problems)}
    return {label: np.array([is_good(label, p.corrupted, p.source, p.metadata.get("utility"), validation_sources)
                             for p in problems]) for label in LABELS if carried[label]}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 1-based."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def auc(scores: np.ndarray, good: np.ndarray) -> float | None:
    """P(score of a good candidate > score of a bad one), ties half (Mann-Whitney U / n_good n_bad)."""
    n_good, n_bad = int(good.sum()), int((~good).sum())
    if not n_good or not n_bad:
        return None
    r = _ranks(scores)
    return float((r[good].sum() - n_good * (n_good + 1) / 2) / (n_good * n_bad))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def selection_diagnostics(problems: list[Problem], pass_rate: np.ndarray, completion_length: np.ndarray,
                          scores: np.ndarray, eligible: np.ndarray, selected: np.ndarray,
                          validation_sources: set[str]) -> dict:
    """The round record's `diagnostics` (module docstring). `selected` indexes `problems`, best first."""
    eligible = np.asarray(eligible, dtype=bool)
    idx = np.flatnonzero(eligible)
    s = np.asarray(scores, dtype=float)[idx]
    ranked = np.ptp(s) > 0 if len(s) else False  # uniform-rule methods give every eligible candidate one score
    k = len(selected)
    top = idx[np.argsort(-s, kind="stable")[:k]] if ranked else np.zeros(0, dtype=int)
    chosen = np.zeros(len(problems), dtype=bool)
    chosen[np.asarray(selected, dtype=int)] = True
    labels = {}
    for name, good in good_labels(problems, validation_sources).items():
        labels[name] = {
            "eligible_good_share": _mean(good[idx]),
            "auc": auc(s, good[idx]) if ranked else None,
            "top_good_share": _mean(good[top]) if ranked else None,
            "selected_good_share": _mean(good[chosen]),
            "selected_pass_rate": {"good": _mean(pass_rate[chosen & good]), "bad": _mean(pass_rate[chosen & ~good])},
            "eligible_pass_rate": {"good": _mean(pass_rate[eligible & good]),
                                   "bad": _mean(pass_rate[eligible & ~good])},
        }
    label_free = {
        "score_std": float(s.std()) if len(s) else None,
        "positive_share": _mean(s > 0) if ranked else None,
        "pass_rate_corr": spearman(s, pass_rate[idx]) if ranked else None,
        "length_corr": spearman(s, completion_length[idx]) if ranked else None,
    }
    return {"eligible": int(eligible.sum()), "ranked": bool(ranked), "labels": labels, "label_free": label_free}


def scores_table(problems: list[Problem], pass_rate: np.ndarray, completion_length: np.ndarray,
                 zero_variance: np.ndarray, scores: np.ndarray, ranking: np.ndarray, selected: np.ndarray) -> list[dict]:
    """One row per candidate (SCORE_COLUMNS): rank 1 = best, empty for ineligible; labels empty where absent."""
    rank = np.zeros(len(problems), dtype=int)
    rank[np.asarray(ranking, dtype=int)] = np.arange(1, len(ranking) + 1)
    chosen = np.zeros(len(problems), dtype=bool)
    chosen[np.asarray(selected, dtype=int)] = True
    return [{"id": prob.id, "pass_rate": float(pass_rate[i]), "learnability": float(pass_rate[i] * (1 - pass_rate[i])),
             "completion_length": round(float(completion_length[i]), 3), "zero_variance": bool(zero_variance[i]),
             "score": float(scores[i]), "rank": int(rank[i]) or "", "selected": bool(chosen[i]),
             "source": prob.source, "corrupted": prob.corrupted if "corrupted" in prob.metadata else "",
             "utility": prob.metadata.get("utility", "")} for i, prob in enumerate(problems)]


def write_scores(path: str | Path, table: list[dict]) -> None:
    """The scores table as CSV, atomically."""
    with fileio.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(table)


def read_scores(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
