"""Reciprocal-rank fusion (`gradalign.selection.fusion`) against rankings worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gradalign.selection.fusion import per_set_ranks, reciprocal_rank_fusion

ALL5 = np.ones(5, dtype=bool)


def test_two_lists_by_hand():
    a = np.array([0.9, 0.1, 0.5, 0.3, 0.7])  # ranks: 1, 5, 3, 4, 2
    b = np.array([-1.0, 4.0, 2.0, 3.0, 0.0])  # ranks: 5, 1, 3, 2, 4
    expected = np.array([1 + 1 / 5, 1 / 5 + 1, 1 / 3 + 1 / 3, 1 / 4 + 1 / 2, 1 / 2 + 1 / 4])
    np.testing.assert_array_equal(per_set_ranks([a, b], ALL5), [[1, 5, 3, 4, 2], [5, 1, 3, 2, 4]])
    fused = reciprocal_rank_fusion([a, b], ALL5)
    assert fused.dtype == np.float64 and fused.shape == (5,)
    # sums of 2 reciprocals <= 2: each reciprocal and the sum round once (<= 0.5 ulp each of values <= 2, 1 ulp =
    # 4.4e-16), so 4 ulps bound any order of operations; a wrong rank changes a score by >= 1/20
    np.testing.assert_allclose(fused, expected, rtol=0, atol=4 * np.finfo(np.float64).eps * 2)


def test_ties_go_to_the_lower_index():
    s = np.array([1.0, 2.0, 2.0, 1.0, 2.0])
    np.testing.assert_array_equal(per_set_ranks([s], ALL5), [[4, 1, 2, 5, 3]])
    np.testing.assert_allclose(reciprocal_rank_fusion([s], ALL5), [1 / 4, 1, 1 / 2, 1 / 5, 1 / 3])


def test_top_cuts_off_each_list():
    a = np.array([0.9, 0.1, 0.5, 0.3, 0.7])  # top 2: candidates 0 (1), 4 (2)
    b = np.array([-1.0, 4.0, 2.0, 3.0, 0.0])  # top 2: candidates 1 (1), 3 (2)
    np.testing.assert_allclose(reciprocal_rank_fusion([a, b], ALL5, top=2), [1, 1, 0, 1 / 2, 1 / 2])
    np.testing.assert_allclose(reciprocal_rank_fusion([a, b], ALL5, top=1), [1, 1, 0, 0, 0])
    # A top beyond the number of candidates changes nothing.
    np.testing.assert_array_equal(reciprocal_rank_fusion([a, b], ALL5, top=99), reciprocal_rank_fusion([a, b], ALL5))


def test_ineligible_candidates_are_never_ranked():
    a = np.array([0.9, 0.1, 0.5, 0.3, 0.7])
    b = np.array([-1.0, 4.0, 2.0, 3.0, 0.0])
    eligible = np.array([False, True, True, True, False])  # drops a's top two (0 and 4)
    # Among {1, 2, 3}: a ranks 2 (1), 3 (2), 1 (3); b ranks 1 (1), 3 (2), 2 (3).
    np.testing.assert_array_equal(per_set_ranks([a, b], eligible), [[0, 3, 1, 2, 0], [0, 1, 3, 2, 0]])
    np.testing.assert_allclose(reciprocal_rank_fusion([a, b], eligible), [0, 1 / 3 + 1, 1 + 1 / 3, 1, 0])
    np.testing.assert_allclose(reciprocal_rank_fusion([a, b], eligible, top=1), [0, 1, 1, 0, 0])
    # Their scores do not matter, even NaN.
    a_nan = a.copy()
    a_nan[[0, 4]] = np.nan
    np.testing.assert_array_equal(reciprocal_rank_fusion([a_nan, b], eligible),
                                  reciprocal_rank_fusion([a, b], eligible))


def test_one_list_keeps_the_score_order():
    rng = np.random.default_rng(0)
    s = rng.normal(size=50)
    fused = reciprocal_rank_fusion([s], np.ones(50, dtype=bool))
    np.testing.assert_array_equal(np.argsort(-fused, kind="stable"), np.argsort(-s, kind="stable"))
    np.testing.assert_array_equal(np.sort(fused)[::-1], 1 / np.arange(1, 51))


def test_infinite_scores_rank_at_the_ends():
    s = np.array([0.0, -np.inf, np.inf, 1.0])
    np.testing.assert_array_equal(per_set_ranks([s], np.ones(4, dtype=bool)), [[3, 4, 1, 2]])


@pytest.mark.parametrize("scores, eligible, top, match", [
    ([], ALL5, None, "at least one score list"),
    ([np.zeros(4)], ALL5, None, r"score list 0 has shape \[4\], expected \[5\]"),
    ([np.zeros(5), np.zeros((5, 1))], ALL5, None, "score list 1 has shape"),
    ([np.zeros(5)], np.ones(5), None, "eligible must be a 1-D bool array"),
    ([np.array([0, np.nan, 0, 0, 0])], ALL5, None, "score list 0 has NaN"),
    ([np.zeros(5)], ALL5, 0, "top must be >= 1"),
])
def test_bad_inputs(scores, eligible, top, match):
    with pytest.raises(ValueError, match=match):
        reciprocal_rank_fusion(scores, eligible, top=top)
