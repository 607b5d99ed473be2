"""Selection diagnostics against independent computations: the AUC against all good-bad pairs counted by hand,
the Spearman correlation against numpy's Pearson of argsort ranks (no ties), the shares written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gradalign.data.problem import Problem
from gradalign.selection.diagnostics import auc, good_labels, selection_diagnostics, spearman


def pairwise_auc(scores, good) -> float:
    pairs = [(g, b) for g in scores[good] for b in scores[~good]]
    return sum(1.0 if g > b else 0.5 if g == b else 0.0 for g, b in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(4))
def test_auc_counts_every_good_bad_pair_ties_half(seed):
    g = np.random.default_rng(seed)
    scores = g.integers(0, 6, size=40).astype(float)  # many ties on purpose
    good = g.random(40) < 0.4
    assert auc(scores, good) == pytest.approx(pairwise_auc(scores, good), abs=1e-12)  # float64 sums of ~40 terms
    assert auc(scores, np.ones(40, bool)) is None


def test_spearman_is_pearson_of_ranks():
    g = np.random.default_rng(1)
    x, y = g.normal(size=30), g.normal(size=30)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
    assert spearman(x, np.ones(30)) is None


def problem(i: int, corrupted: bool, source: str) -> Problem:
    return Problem(f"p{i}", f"{i}+1=", str(i + 1), source, {"corrupted": corrupted})


def test_round_figures_by_hand():
    # 6 candidates; p5 is not eligible. Scores rank p0 > p2 > p1 > p3 > p4; two are kept (p0, p2).
    problems = [problem(0, False, "sub"), problem(1, True, "add"), problem(2, False, "add"), problem(3, True, "sub"),
                problem(4, True, "add"), problem(5, False, "sub")]
    scores = np.array([0.9, 0.3, 0.5, -0.1, -0.4, 0.0])
    eligible = np.array([True] * 5 + [False])
    pass_rate = np.array([0.25, 0.5, 0.75, 0.5, 0.625, 1.0])
    length = np.array([3, 4, 5, 6, 7, 8.0])
    d = selection_diagnostics(problems, pass_rate, length, scores, eligible, np.array([0, 2]), {"sub"})
    corrupted = d["labels"]["corrupted"]
    assert corrupted["eligible_good_share"] == pytest.approx(2 / 5)
    assert corrupted["auc"] == pytest.approx(1.0)  # both clean ones outscore all three corrupted
    assert corrupted["top_good_share"] == 1.0 and corrupted["selected_good_share"] == 1.0
    assert corrupted["selected_pass_rate"] == {"good": pytest.approx(0.5), "bad": None}
    target = d["labels"]["target"]  # good = source "sub": p0, p3 among the eligible
    assert target["eligible_good_share"] == pytest.approx(2 / 5) and target["top_good_share"] == 0.5
    assert target["auc"] == pytest.approx(pairwise_auc(scores[:5], np.array([1, 0, 0, 1, 0], bool)))
    assert d["label_free"]["positive_share"] == pytest.approx(3 / 5)
    # score ranks 5 3 4 2 1 against length ranks 1..5: 1 - 6·Σd²/(n(n²-1)) = 1 - 6·38/120
    assert d["label_free"]["length_corr"] == pytest.approx(1 - 6 * 38 / 120)
    assert d["eligible"] == 5 and d["ranked"]


def test_uniform_draws_do_not_rank_and_labels_need_both_sides():
    problems = [problem(i, i % 2 == 0, "add") for i in range(4)]
    d = selection_diagnostics(problems, np.full(4, 0.5), np.ones(4), np.zeros(4), np.ones(4, bool), np.array([1]),
                              {"add"})
    assert not d["ranked"] and d["labels"]["corrupted"]["auc"] is None
    assert d["labels"]["corrupted"]["selected_good_share"] == 1.0  # p1 is clean
    assert "target" not in d["labels"]  # every source is the validation's: nothing to separate
    assert set(good_labels(problems, {"sub"})) == {"corrupted"}  # no problem from a validation source either
