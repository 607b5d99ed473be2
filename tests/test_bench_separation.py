"""`gradalign bench separation`: every method scored on one round's signals equals that method's own round-0
selection (its own rollouts and scoring pass, computed independently), cells resume from their files, and a method
that needs what one scoring pass cannot give is a one-line error. The mixed scenario carries all three labels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from gradalign.bench import separation
from gradalign.bench.savings import select_once
from gradalign.cli import main
from gradalign.config import RunConfig
from gradalign.curriculum.setup import load_problem_sets
from gradalign.policy.warmstart import warm_started_tiny

SMALL = dict(pool_size=200, validation_size=16, test_size=8, chunk_size=48, selection_ratio=4, rollouts_per_problem=6,
             validation_rollouts=4)
METHODS = ["gradalign-lfdr", "gradalign", "gradalign-z", "accgreedy"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("separation")
    config = out / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    assert main(["bench", "separation", "--scenarios", "mixed", "--seeds", "2", "--methods",
                 ",".join(METHODS), "--config", str(config), "--out", str(out)]) == 0
    return out, json.loads((out / "separation.json").read_text())


def near_tied_pairs(scores: np.ndarray, good: np.ndarray, rtol: float = 1e-5) -> int:
    """(good, bad) pairs whose scores are within fp32 round-off of each other: rtol 1e-5 (≈ 84 ulps) of the largest
    score, what two passes that sum in different orders can swap (the scores agree to ~3e-7 of it here)."""
    gap = np.abs(scores[good][:, None] - scores[~good][None, :])
    return int((gap <= rtol * np.abs(scores).max()).sum())


def test_each_method_scores_as_its_own_selection_would(measured, monkeypatch):
    """The same seed gives the same rollouts, so a method's diagnostics from the shared signals equal those of its
    own selection. Its own pass computes fewer signals (no norms for gradalign-z, no per-completion terms for
    gradalign): the scores agree to fp32 round-off, so the AUC may differ only where a good and a bad candidate's
    scores are tied to round-off (z saturates at sqrt(k - 1) for several groups alike), by at most 1 of n_good·n_bad
    for each such pair, and the top-k share by at most one candidate (1/12). The default's early decision is off
    here: it skips the scores this compares (the benchmark never takes it)."""
    from gradalign.selection import get_method
    monkeypatch.setattr(get_method("gradalign-lfdr"), "decide_early", None)
    out, result = measured
    model, tokenizer = warm_started_tiny()
    for cell in result["cells"]:
        cfg = RunConfig.of(**SMALL, scenario=cell["scenario"], seed=cell["seed"])
        sets = load_problem_sets(cfg)
        for method in METHODS:
            own = select_once(dataclasses.replace(cfg, method=method), sets, model, tokenizer, None)
            for label, figures in cell["methods"][method].items():
                mine, good = own["labels"][label], own["good"][label]
                assert figures["eligible_good_share"] == mine["eligible_good_share"]
                if mine["auc"] is not None:
                    swaps = near_tied_pairs(own["scores"], good) / (good.sum() * (~good).sum())
                    assert abs(figures["auc"] - mine["auc"]) <= swaps + 1e-12, (method, label)
                    assert figures["top_good_share"] == pytest.approx(mine["top_good_share"], abs=1 / 12 + 1e-9)


def test_rows_summarise_the_cells_and_a_rerun_recomputes_nothing(measured, monkeypatch):
    out, result = measured
    rows = {(r["scenario"], r["label"], r["method"]): r for r in result["rows"]}
    assert {("mixed", label, "gradalign-lfdr") for label in ("corrupted", "target", "utility")} <= set(rows)
    aucs = [c["methods"]["gradalign"]["corrupted"]["auc"] for c in result["cells"] if c["scenario"] == "mixed"]
    assert rows["mixed", "corrupted", "gradalign"]["auc"][0] == pytest.approx(sum(aucs) / len(aucs))
    assert {p.suffix for p in (out / "cells").iterdir()} == {".json", ".npz"}
    saved = np.load(out / "cells" / "mixed-seed-0.npz")
    assert {"pass_rate", "completion_dots", "good_corrupted", "source"} <= set(saved.files)
    assert len(saved["source"]) == len(saved["pass_rate"]) == SMALL["chunk_size"]
    # every completion's text, in its group: what a rule reading answers needs to be tried on the cell later
    per_group = np.bincount(saved["completion_group"], minlength=SMALL["chunk_size"])
    assert per_group.tolist() == np.isfinite(saved["completion_rewards"]).sum(1).tolist()
    assert len(saved["completions"]) == per_group.sum() and saved["completions"].dtype.kind == "U"
    monkeypatch.setattr(separation, "measure_cell", lambda *a: pytest.fail("a finished cell was recomputed"))
    again = separation.run_separation(["mixed"], METHODS, [0, 1], overrides=SMALL, out=str(out), echo=None)
    assert json.loads(json.dumps(again["rows"])) == result["rows"]


def test_a_method_one_pass_cannot_score_is_a_one_line_error(tmp_path, capsys):
    assert main(["bench", "separation", "--methods", "gradalign,learnalign", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learnalign" in err[0] and "warmup" in err[0]
