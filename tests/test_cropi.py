"""CROPI (METHODS.md §3): rank-fused scoring, the off-policy gradient's consistency with the stored behaviour
log-probs, and the multi-stage loop on offline rollouts end to end (tiny settings), with resume and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gradalign.cli import main
from gradalign.config import RunConfig
from gradalign.curriculum import loop
from gradalign.curriculum.loop import Curriculum
from gradalign.curriculum.offline import offline_influence, on_policy_batch, popi_batch, projected
from gradalign.curriculum.setup import load_problem_sets, make_reward
from gradalign.data.io import load_problems, save_problems
from gradalign.data.regimes import imbalance
from gradalign.gradients import get_projector
from gradalign.gradients.surrogate import completion_logps
from gradalign.policy import rollouts as rollouts_module
from gradalign.policy.rollout_store import RolloutStore
from gradalign.policy.rollouts import SamplingConfig, sample_rollouts
from gradalign.policy.warmstart import warm_started_tiny
from gradalign.rewards import ProblemReward, get_verifier
from gradalign.selection import Candidates, SelectionOptions, get_method, select


def test_rank_fusion_over_two_validation_sets_by_hand():
    c = Candidates(ids=list("abcde"), pass_rate=np.array([.5, .5, .5, .5, 1.0]),
                   zero_variance=np.array([False, False, False, False, True]),
                   cos_sets=np.array([[.9, .1], [.5, .8], [.1, .9], [.3, .2], [.99, .99]]))
    # set 0 ranks a, b, d, c; set 1 ranks c, b, d, a (e is zero-variance: never ranked, never selected)
    scored = get_method("cropi").score(c, SelectionOptions(keep=2))  # each set votes for its top 2
    np.testing.assert_allclose(scored.scores, [1, 1 / 2 + 1 / 2, 1, 0, 0])
    assert set(select(scored, 3, np.random.default_rng(0)).tolist()) == {0, 1, 2}  # b (2nd twice) ties a and c
    everyone = get_method("cropi").score(c, SelectionOptions(keep=None, zero_variance="score-zero"))
    np.testing.assert_allclose(everyone.scores, [1 + 1 / 4, 1 / 2 + 1 / 2, 1 / 4 + 1, 1 / 3 + 1 / 3, 0])
    assert not everyone.eligible[4]  # zero-variance stays ineligible whatever the option


def test_stored_log_probs_make_the_ratio_one_at_the_behaviour_policy():
    """β's sampling-time log-probs (temperature 0.5, top-p 1) equal π_θ's at the same temperature, so at θ = β the
    POPI features equal the on-policy GRPO features of the same rollouts."""
    model, tokenizer = warm_started_tiny()
    problems = imbalance(pool_size=24, validation_size=4, test_size=4, seed=2).pool
    r = sample_rollouts(model, tokenizer, problems, 4, ProblemReward(get_verifier("exact")),
                        SamplingConfig(temperature=0.5, top_p=1.0, max_new_tokens=6), seed=3)
    rows = torch.arange(r.group.numel())
    with torch.no_grad():
        recomputed = completion_logps(model, r, rows, temperature=0.5)
        scale = scaled_logit_magnitude(model, r, rows, temperature=0.5)
    # generate's incremental (KV-cache) fp32 logits and a fresh full forward round differently: each log-prob may
    # differ by a few fp32 ulps of the largest scaled logit, amplified through the layers. 64 ulps of it is far
    # above that round-off (measured up to ~2e-5 here) and far below a real bug (wrong temperature, position or
    # token: errors of 0.1 or more).
    atol = 64 * torch.finfo(torch.float32).eps * scale
    torch.testing.assert_close(recomputed, r.sample_logps, atol=atol, rtol=0)
    projector = get_projector("sparse", 256, seed=0)
    off, on = (projector.features(model, b(r)) for b in (popi_batch, on_policy_batch))
    assert on.abs().sum() > 0
    # per token the ratio is exp(Δ) with |Δ| <= atol, and the features are linear in it: relative error <= ~atol,
    # plus the projection's own fp32 round-off
    assert torch.linalg.norm(off - on) <= (4 * atol + 1e-5) * torch.linalg.norm(on)


def scaled_logit_magnitude(model, r, rows, temperature: float) -> float:
    """max |logit| / temperature over the sequences' positions: the scale of the log-probs' fp32 round-off."""
    ids = torch.cat([r.prompt_ids[rows], r.completion_ids[rows]], 1)
    mask = torch.cat([r.prompt_mask[rows], r.completion_mask[rows]], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    return float(logits.abs().max()) / temperature


def tiny_cfg(tmp_path, name="run", **kw) -> RunConfig:
    base = dict(output_dir=str(tmp_path / name), scenario="imbalance", pool_size=64, validation_size=16,
                test_size=16, chunk_size=32, selection_ratio=4, rollouts_per_problem=4, offline_validation_rollouts=8,
                rounds=2, steps_per_round=2, problems_per_step=4, num_generations=4, eval_samples=0,
                projection_dim=512, method="cropi")
    return RunConfig.of(**{**base, **kw})


@pytest.mark.slow
def test_two_stages_on_rollouts_collected_once(tmp_path, monkeypatch):
    calls = []
    real = rollouts_module.sample_rollouts
    monkeypatch.setattr("gradalign.policy.rollout_store.sample_rollouts",
                        lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    result = Curriculum(tiny_cfg(tmp_path, offpolicy_fidelity=True)).run()
    assert sum(calls) == 64 + 16  # pool and validation sampled once, before stage 0, never again
    offline = json.loads((tmp_path / "run" / "offline.json").read_text())
    assert offline["pool_problems"] == 64 and offline["validation_sets"] == {"sub": offline["validation_sets"]["sub"]}
    store_meta = json.loads((tmp_path / "run" / "offline" / "pool" / "meta.json").read_text())
    assert store_meta["temperature"] == 0.5 and store_meta["top_p"] == 1.0 and store_meta["k"] == 4
    for rec in result.rounds:
        assert rec["validation_sets"] == ["sub"] and rec["timings"]["rollouts"] < 1.0
        assert 1 <= rec["selected_count"] <= 8
        fid = rec["offpolicy"]
        assert set(fid) == {"problems", "cosine_mean", "cosine_median", "share_cosine_above_0.6", "selection_overlap"}
        assert fid["selection_overlap"] is None or 0 <= fid["selection_overlap"] <= 1
    # Zero-variance problems (under β's rollouts) are never selected.
    stored = RolloutStore.open(tmp_path / "run" / "offline" / "pool").load()
    zero = {pid for pid, z in zip(stored.problem_ids, stored.zero_variance()) if z}
    assert all(not set(rec["selected_ids"]) & zero for rec in result.rounds)


@pytest.mark.slow
def test_resume_after_a_stage_reuses_the_store_and_matches(tmp_path, monkeypatch):
    whole = Curriculum(tiny_cfg(tmp_path, "whole")).run()
    original = loop.Curriculum.run_round

    def dies_in_stage_1(self, r, *a):
        if r == 1:
            raise KeyboardInterrupt
        return original(self, r, *a)
    monkeypatch.setattr(loop.Curriculum, "run_round", dies_in_stage_1)
    with pytest.raises(KeyboardInterrupt):
        Curriculum(tiny_cfg(tmp_path, "resumed")).run()
    monkeypatch.setattr(loop.Curriculum, "run_round", original)
    calls = []
    monkeypatch.setattr("gradalign.policy.rollout_store.sample_rollouts", lambda *a, **k: calls.append(1))
    resumed = Curriculum(tiny_cfg(tmp_path, "resumed")).run()
    assert not calls  # the stores are opened, not resampled
    assert [r["selected_ids"] for r in resumed.rounds] == [r["selected_ids"] for r in whole.rounds]


@pytest.mark.slow
def test_reset_optimizer_gives_each_stage_a_fresh_adamw(tmp_path, monkeypatch):
    states = []
    original = loop.Curriculum.run_round
    monkeypatch.setattr(loop.Curriculum, "run_round",
                        lambda self, r, m, t, opt, sch: states.append(len(opt.state)) or original(self, r, m, t, opt, sch))
    Curriculum(tiny_cfg(tmp_path, "reset", reset_optimizer=True, method="random")).run()
    Curriculum(tiny_cfg(tmp_path, "carry", method="random")).run()
    assert states[0] == 0 and states[1] == 0  # reset: stage 1 starts without moments
    assert states[2] == 0 and states[3] > 0  # carried: stage 1 sees stage 0's moments


@pytest.mark.slow
def test_cli_rollouts_then_run(tmp_path, capsys):
    sc = imbalance(pool_size=64, validation_size=16, test_size=16, seed=0)
    files = {name: tmp_path / f"{name}.jsonl" for name in ("pool", "val", "test")}
    for name, problems in zip(files, (sc.pool, sc.validation, sc.test)):
        save_problems(files[name], problems)
    assert main(["rollouts", "--pool", str(files["pool"]), "--k", "4", "--out", str(tmp_path / "st/pool")]) == 0
    assert main(["rollouts", "--pool", str(files["val"]), "--k", "8", "--out", str(tmp_path / "st/val")]) == 0
    capsys.readouterr()
    assert main(["rollouts", "--pool", str(files["pool"]), "--k", "4", "--out", str(tmp_path / "st/pool"),
                 "--offline-temperature", "0.9"]) == 2
    assert "'temperature' is 0.5, expected 0.9" in capsys.readouterr().err
    assert main(["run", "--method", "cropi", "--pool", str(files["pool"]), "--validation", str(files["val"]),
                 "--test", str(files["test"]), "--offline-rollouts", str(tmp_path / "st/pool"),
                 "--offline-validation", str(tmp_path / "st/val"), "--offline-validation-rollouts", "8",
                 "--rollouts-per-problem", "4", "--chunk-size", "32", "--selection-ratio", "4", "--rounds", "1",
                 "--steps-per-round", "1", "--problems-per-step", "4", "--num-generations", "4", "--eval-samples",
                 "0", "--projection-dim", "256", "--output-dir", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run" / "offline" / "pool").exists()  # the given stores were used


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cropi", "learnalign"])
def test_trl_drop_in_refuses_methods_it_cannot_run(tmp_path, method):
    from datasets import Dataset
    from trl import GRPOConfig

    from gradalign import GradAlignGRPOTrainer
    model, tokenizer = warm_started_tiny()
    pool = Dataset.from_list([{"prompt": "1+1=", "answer": "2"}] * 8)
    with pytest.raises(ValueError, match=f"cannot run method '{method}'"):
        GradAlignGRPOTrainer(model=model, processing_class=tokenizer,
                             reward_funcs=lambda completions, **k: [0.0] * len(completions),
                             train_dataset=pool, validation_dataset=pool,
                             args=GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8,
                                             num_generations=8, report_to=[], use_cpu=True, bf16=False),
                             selection=RunConfig.of(method=method))


@pytest.mark.slow
def test_one_cropi_stage_as_a_one_shot_selection(tmp_path):
    sc = imbalance(pool_size=48, validation_size=8, test_size=8, seed=4)
    pool, val = tmp_path / "pool.jsonl", tmp_path / "val.jsonl"
    save_problems(pool, sc.pool)
    save_problems(val, sc.validation)
    out = tmp_path / "sel.jsonl"
    assert main(["select", "--method", "cropi", "--pool", str(pool), "--validation", str(val), "--n", "6",
                 "--out", str(out), "--rollouts-per-problem", "4", "--offline-validation-rollouts", "8",
                 "--projection-dim", "256"]) == 0
    store = RolloutStore.open(tmp_path / "sel.work" / "offline" / "pool")  # the stores live beside the output
    rollouts = store.load()
    zero = {pid for pid, z in zip(rollouts.problem_ids, rollouts.zero_variance()) if z}
    chosen = [p.id for p in load_problems(out)]
    assert 1 <= len(chosen) <= 6 and not set(chosen) & zero


@pytest.mark.parametrize("projection", ["sparse-countsketch", "sparse", "khatri-rao"])
def test_a_validation_direction_is_the_mean_of_its_problems_projected_gradients(tmp_path, projection):
    """φ_v is computed as R(mean gradient) from one backward; it must equal the mean of the set's per-problem
    projected POPI gradients (zero-variance problems counted as zero rows), the paper's definition."""
    cfg = tiny_cfg(tmp_path, projection=projection)
    model, tokenizer = warm_started_tiny()
    sets = load_problem_sets(cfg)
    influence = offline_influence(cfg, model, tokenizer, sets.pool, sets.validation, make_reward(cfg), collect=True)
    directions = influence.directions(model)
    assert directions is not None
    for name, vector in zip(directions.names, directions.vectors):
        r = influence.validation_store.load(influence.sets[name], pad_id=tokenizer.pad_token_id)
        assert r.zero_variance().any() and not r.zero_variance().all()  # both kinds of rows are counted
        want = projected(model, influence.projector(model), popi_batch(r), ~r.zero_variance(), cfg.micro_batch).mean(0)
        # two fp32 orders of summing the same terms (a per-problem reduction vs one backward's weight gradient):
        # a few hundred fp32 ulps of the vector's scale; a wrong weight or a missing problem moves it by >= 1/n
        assert torch.linalg.norm(vector - want) <= 1e-4 * torch.linalg.norm(want), name
