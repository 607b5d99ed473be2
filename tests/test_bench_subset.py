"""`gradalign bench subset`: the comparison against whole-model scoring (hand-made scores against hand-computed
overlaps and corrupted shares), the scope syntax, and one small real round end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from gradalign.bench import subset
from gradalign.config import RunConfig
from gradalign.data.problem import Problem


class FakeCase:
    def __init__(self, corrupted, live):
        self.problems = [Problem(f"p{i}", "q", "a", metadata={"corrupted": c}) for i, c in enumerate(corrupted)]
        self.live = np.asarray(live, dtype=bool)


def test_comparison_against_the_whole_model():
    case = FakeCase(corrupted=[True, False, False, True, False, True], live=[1, 1, 1, 1, 0, 1])
    full = np.array([0.9, 0.8, 0.1, 0.2, 5.0, 0.3])  # live top 2: p0, p1
    mine = np.array([0.9, 0.0, 0.1, 0.7, 9.0, 0.8])  # live top 2: p0, p5 (p4 is not live)
    got = subset.compare(case, mine, full, keep=2)
    assert got["selected_overlap"] == 0.5
    assert got["corrupted_share"] == 1.0 and got["full_corrupted_share"] == 0.5
    assert got["top10"] == 1.0  # top 1 of 5 live: p0 in both
    assert got["spearman"] == pytest.approx(np.corrcoef([5, 1, 2, 3, 4], [5, 4, 1, 2, 3])[0, 1])
    unlabelled = FakeCase(corrupted=[False] * 6, live=[1] * 6)
    for p in unlabelled.problems:
        p.metadata.clear()
    assert subset.compare(unlabelled, mine, full, keep=2)["corrupted_share"] is None


def test_scope_syntax():
    assert subset.parse_scopes("last_blocks:8,lm_head.*;lm_head.*") == {
        "last_blocks:8 + lm_head.*": ["last_blocks:8", "lm_head.*"], "lm_head.*": ["lm_head.*"]}
    with pytest.raises(argparse.ArgumentTypeError, match="empty scope"):
        subset.parse_scopes("lm_head.*;;")
    with pytest.raises(ValueError, match="unknown subset benchmark model 'big'"):
        subset.round_config("big", 0)


def test_a_small_round_end_to_end(tmp_path, monkeypatch):
    small = dict(pool_size=40, validation_size=8, test_size=8, chunk_size=16, selection_ratio=4,
                 rollouts_per_problem=4, validation_rollouts=4)
    monkeypatch.setattr(subset, "round_config", lambda model, seed: RunConfig(seed=seed, **small))
    out = tmp_path / "subset.json"
    subset.run_subset(["tiny"], subset.parse_scopes("last_blocks:1,lm_head.*"), repeats=1, out=str(out), echo=None)
    rows = json.loads(out.read_text())["rows"]
    assert [r["scope"] for r in rows] == ["whole model", "last_blocks:1 + lm_head.*"]
    whole, part = rows
    assert whole["x_full"] == 1.0 and whole["spearman"] == pytest.approx(1.0) and whole["selected_overlap"] == 1.0
    assert 0 < part["parameters"] < whole["parameters"] and part["seconds"] > 0
    assert whole["corrupted_share"] == whole["full_corrupted_share"]  # the default scenario is labelled
