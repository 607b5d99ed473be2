"""LearnAlign (METHODS.md §2): scores against an independent brute-force computation (full per-problem gradients
from an explicit per-completion loss, projected, unit-normalised, explicit n×n pairwise matrix), V and
zero-variance handling, the warm-up, and the one-shot and staged modes end to end with tiny settings."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_gradients import GROUP_SIZES, make_model, make_rollouts
from test_surrogate_terms import reference_grads, token_logps

from gradalign.cli import main
from gradalign.config import RunConfig
from gradalign.curriculum.loop import Curriculum
from gradalign.curriculum.setup import make_reward
from gradalign.curriculum.round import RoundSelection, RoundSelector
from gradalign.curriculum.trl_bridge import grpo_steps, new_optimizer
from gradalign.data.io import load_problems, save_problems
from gradalign.data.regimes import imbalance
from gradalign.policy.rollout_store import model_hash
from gradalign.policy.warmstart import warm_started_tiny
from gradalign.selection import Candidates, SelectionOptions, get_method, select
from gradalign.selection.diagnostics import SCORE_COLUMNS


def pairwise_row_means(features: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brute force: S_ij = V_i V_j cos(ĝ_i, ĝ_j) as an explicit n×n matrix (zero rows have cosine 0), row means."""
    norms = np.linalg.norm(features, axis=1)
    S = np.zeros((len(v), len(v)))
    for i in range(len(v)):
        for j in range(len(v)):
            if norms[i] > 0 and norms[j] > 0:
                S[i, j] = v[i] * v[j] * features[i] @ features[j] / (norms[i] * norms[j])
    return S.mean(1)


def random_candidates(n=12, d=16, seed=0) -> Candidates:
    g = np.random.default_rng(seed)
    p = g.integers(1, 8, size=n) / 8  # mixed groups ...
    p[:2] = [0.0, 1.0]  # ... and two zero-variance ones
    feats = g.normal(size=(n, d))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats[:2] = 0  # their gradient is not computed
    return Candidates(ids=[f"c{i}" for i in range(n)], pass_rate=p, zero_variance=(p == 0) | (p == 1), features=feats)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_is_the_row_mean_of_the_pairwise_matrix(seed):
    c = random_candidates(seed=seed)
    scored = get_method("learnalign").score(c, SelectionOptions())
    np.testing.assert_allclose(scored.scores, pairwise_row_means(c.features, c.pass_rate * (1 - c.pass_rate)),
                               rtol=1e-12, atol=1e-15)  # float64 (eps 2.2e-16) sums of ~10 terms: measured 3e-18


def test_v_and_zero_variance_handling():
    c = random_candidates()
    v = c.pass_rate * (1 - c.pass_rate)
    learn = get_method("learnability").score(c, SelectionOptions())
    np.testing.assert_array_equal(learn.scores, v)
    assert v.max() <= 0.25 and v[0] == v[1] == 0
    for name in ("learnalign", "learnalign-no-v", "learnability", "learnalign-no-warmup"):
        scored = get_method(name).score(c, SelectionOptions())
        assert not scored.eligible[:2].any() and scored.eligible[2:].all()  # excluded by default
        order = select(scored, len(c), np.random.default_rng(0))
        assert len(order) == len(c) - 2 and not {0, 1} & set(order.tolist())
        kept = get_method(name).score(c, SelectionOptions(zero_variance="score-zero"))
        assert kept.eligible.all() and kept.scores[0] == kept.scores[1] == 0


def test_no_v_ablation_is_the_cosine_to_the_mean_feature():
    c = random_candidates(seed=4)
    m = c.features.mean(0)
    expected = c.features @ m / np.linalg.norm(m)
    np.testing.assert_allclose(get_method("learnalign-no-v").score(c, SelectionOptions()).scores, expected,
                               rtol=1e-9)  # float64 dot and norm of short vectors: ~1e-15, measured 2.6e-12 abs
    assert not np.allclose(np.argsort(expected), np.argsort(get_method("learnalign").score(c, SelectionOptions()).scores))


def test_registry_needs():
    assert get_method("learnalign").needs == {"features", "warmup"}
    assert get_method("learnalign-no-v").needs == {"features", "warmup"}
    assert get_method("learnalign-no-warmup").needs == {"features"}
    assert get_method("learnability").needs == frozenset()


# ───────────────────────────────────────────── the features path against full gradients and an explicit matrix


@pytest.mark.parametrize("projection", ["khatri-rao-energy", "khatri-rao", "dense"])
def test_learnalign_scores_match_brute_force(projection):
    model, reference = make_model(tie=True, seed=7), make_model(tie=True, seed=8)
    rollouts, prompts, comps, rewards = make_rollouts(seed=9)
    cfg = RunConfig.of(method="learnalign", projection=projection, projection_dim=256, kl_beta=0.04)
    selector = RoundSelector(cfg, [], make_reward(cfg))
    used = []
    real_projector = selector.projector
    selector.projector = lambda m, b, sample: used.append(real_projector(m, b, sample)) or used[-1]
    cand = Candidates(ids=rollouts.problem_ids, pass_rate=rollouts.pass_rates(), zero_variance=rollouts.zero_variance())
    selector._features(model, reference, rollouts, cand, RoundSelection(np.zeros(0, int), cand, np.zeros(5)),
                       np.arange(5), 5)
    got = get_method("learnalign").score(cand, SelectionOptions()).scores

    # Independent: per-completion reference log-probs and the explicit GRPO + KL loss of every problem.
    ref_logps = torch.zeros(rollouts.completion_ids.shape, dtype=torch.float64)
    with torch.no_grad():
        for j, (p, c) in enumerate(zip(prompts, comps)):
            ref_logps[j, :len(c)] = token_logps(reference, p, c, 1.0)
    adv = rollouts.advantages("group").double()
    grads = reference_grads(model, prompts, comps, adv, None, ref_logps, 0.04, "sequence-mean", 1.0)
    live = ~rollouts.zero_variance()
    phi = used[0].project_flat(model, grads.float()).double().numpy()
    phi[~live] = 0  # V = 0: not scored
    v = rollouts.pass_rates() * (1 - rollouts.pass_rates())
    expected = pairwise_row_means(phi, v)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert len(GROUP_SIZES) == len(got) and np.all(got[~live] == 0)


# ─────────────────────────────────────────────────────────────── warm-up, staged and one-shot runs (slow)


def tiny_cfg(tmp_path, name="run", **kw) -> RunConfig:
    base = dict(output_dir=str(tmp_path / name), pool_size=64, validation_size=16, test_size=32, chunk_size=32,
                selection_ratio=4, rollouts_per_problem=4, validation_rollouts=4, rounds=2, steps_per_round=2,
                problems_per_step=4, num_generations=4, eval_samples=0, warmup_problems=16, warmup_steps=2,
                projection_dim=512, method="learnalign")
    return RunConfig.of(**{**base, **kw})


@pytest.mark.slow
def test_warm_up_trains_a_copy_and_leaves_the_policy_alone(tmp_path):
    model, tokenizer = warm_started_tiny()
    cfg = tiny_cfg(tmp_path)
    sets = imbalance(pool_size=64, validation_size=8, test_size=8, seed=0)
    # First train the policy itself with TRL, as a curriculum round does: the copy must still be independent.
    optimizer, scheduler = new_optimizer(model, cfg)
    grpo_steps(model, tokenizer, sets.pool[:8], 1, cfg, make_reward(cfg), optimizer, scheduler, seed=0)
    before = model_hash(model)
    selector = RoundSelector(cfg, [], make_reward(cfg), pool=sets.pool)
    scorer = selector.warm_up(model, tokenizer, sets.pool[:32], seed=1)
    assert model_hash(model) == before
    assert model_hash(scorer) != before  # the warm-up did train the copy
    x = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert not torch.allclose(scorer(input_ids=x).logits, model(input_ids=x).logits)
    assert selector.last_warmup == {"problems": 16, "steps": 2, "reward": selector.last_warmup["reward"]}
    sel = selector.select(model, tokenizer, sets.pool[:32], seed=2)
    assert model_hash(model) == before and sel.warmup["steps"] == 2
    assert {"warmup", "rollouts", "scoring", "selection"} <= set(sel.timings)


@pytest.mark.slow
def test_staged_mode_runs_end_to_end(tmp_path):
    """Staged LearnAlign = the curriculum with the chunk set to the whole pool: warm-up → score → select → train."""
    result = Curriculum(tiny_cfg(tmp_path, chunk_size=64, selection_ratio=8)).run()
    assert len(result.rounds) == 2
    for rec in result.rounds:
        assert rec["candidates"] == 64 and 1 <= rec["selected_count"] <= 8
        assert rec["warmup"]["steps"] == 2 and rec["timings"]["warmup"] > 0
    plain = Curriculum(tiny_cfg(tmp_path, "no-warmup", method="learnalign-no-warmup", rounds=1)).run()
    assert "warmup" not in plain.rounds[0] and "warmup" not in plain.rounds[0]["timings"]


@pytest.mark.slow
def test_one_shot_select_then_train(tmp_path, capsys):
    sc = imbalance(pool_size=64, validation_size=8, test_size=16, seed=1)
    pool, test = tmp_path / "pool.jsonl", tmp_path / "test.jsonl"
    save_problems(pool, sc.pool)
    save_problems(test, sc.test)
    out = tmp_path / "selected.parquet"
    args = ["select", "--method", "learnalign", "--pool", str(pool), "--n", "10", "--out", str(out),
            "--rollouts-per-problem", "4", "--warmup-problems", "16", "--warmup-steps", "2", "--problems-per-step",
            "4", "--num-generations", "4", "--projection-dim", "512"]
    assert main(args) == 0
    with open(tmp_path / "selected.scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [p.id for p in sc.pool]
    assert list(rows[0]) == SCORE_COLUMNS
    ranked = sorted((r for r in rows if r["rank"]), key=lambda r: int(r["rank"]))
    scores = [float(r["score"]) for r in ranked]
    assert scores == sorted(scores, reverse=True)  # rank follows the score
    chosen = [p.id for p in load_problems(out)]
    assert chosen == [r["id"] for r in ranked[:10]]  # the subset is the top 10, best first
    assert {r["id"] for r in rows if r["selected"] == "True"} == set(chosen)
    for r in rows:
        p = float(r["pass_rate"])
        assert float(r["learnability"]) == pytest.approx(p * (1 - p))
        if p in (0.0, 1.0):
            assert r["rank"] == "" and r["selected"] == "False"  # zero-variance: never selected
    assert (tmp_path / "selected.summary.json").exists()
    assert main(["run", "--pool", str(out), "--test", str(test), "--method", "full", "--rounds", "1",
                 "--steps-per-round", "1", "--problems-per-step", "4", "--num-generations", "4", "--eval-samples",
                 "0", "--output-dir", str(tmp_path / "train")]) == 0
    capsys.readouterr()
    assert main(args[:-2] + ["--n", "0"]) == 2
    assert "--n must be between 1" in capsys.readouterr().err
    assert main([a if a != str(out) else str(tmp_path / "x.csv") for a in args]) == 2
    assert "must end in .jsonl or .parquet" in capsys.readouterr().err
