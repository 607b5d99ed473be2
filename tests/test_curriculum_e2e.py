"""End-to-end: the curriculum through the real TRL GRPOTrainer on the warm-started tiny policy, tiny settings."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import gradalign
from gradalign.config import RunConfig
from gradalign.curriculum import trl_bridge
from gradalign.curriculum.loop import Curriculum
from gradalign.policy.rollouts import Rollouts
from gradalign.provenance import source_fingerprint
from gradalign.rewards import ExactMatch
from gradalign.policy.warmstart import WarmStartConfig, sampled_accuracy, warm_started_tiny
from gradalign.data.tasks import generate_mix
from gradalign.selection import REGISTRY

pytestmark = pytest.mark.slow


def tiny_cfg(tmp_path, name="run", **kw) -> RunConfig:
    base = dict(output_dir=str(tmp_path / name), pool_size=64, validation_size=16, test_size=32, chunk_size=32,
                selection_ratio=4, rollouts_per_problem=4, validation_rollouts=4, rounds=2, steps_per_round=2,
                problems_per_step=4, num_generations=4, eval_samples=0)
    return RunConfig.of(**{**base, **kw})


def recording_train_round(calls: list):
    """Wrap the loop's TRL call so the test sees the trainer's dataset, the schedule it played and every problem id
    TRL's reward function was asked to score."""
    real = trl_bridge.train_round

    def wrapper(trainer, schedule):
        seen = trainer.reward_funcs[0].seen = []
        out = real(trainer, schedule)
        calls.append({"dataset": list(trainer.train_dataset["problem_id"]), "schedule": schedule, "seen": seen})
        return out
    return wrapper


def test_warm_start_lands_where_grpo_groups_disagree():
    model, tokenizer = warm_started_tiny()
    held_out = generate_mix({"add": 1, "sub": 1}, 128, seed=99, id_prefix="check")
    acc = sampled_accuracy(model, tokenizer, held_out, WarmStartConfig())
    assert 0.25 <= acc <= 0.65, acc  # sampled accuracy around 0.3-0.5: many groups have mixed rewards


def test_trl_trains_on_exactly_the_selected_problems(tmp_path, monkeypatch, caplog):
    calls, checks = [], []
    monkeypatch.setattr(trl_bridge, "train_round", recording_train_round(calls))
    check = Rollouts.inconsistent_rewards
    monkeypatch.setattr(Rollouts, "inconsistent_rewards",
                        lambda self, keys=None: checks.append((len(self.completions), keys)) or check(self, keys))
    with caplog.at_level(logging.INFO, logger="gradalign"):
        result = Curriculum(tiny_cfg(tmp_path)).run()
    # the consistency check reads answers as the verifier does (exact match: each completion's answer line)
    assert len(checks) == 2 and all(keys is not None and len(keys) == n and all(isinstance(key, str) for key in keys)
                                    for n, keys in checks)
    # a long round shows where it is: one line per phase as it ends, with its counts and seconds, in order
    phases = [m.split(": ")[1].split(":")[0].split(" ")[0] for m in caplog.messages if m.startswith("round 2/2: ")]
    assert phases == ["candidates", "validation", "scoring", "selected", "training", "evaluation", "done"]  # on demand
    assert any(m.startswith("round 1/2: candidates: 32 problems, 128 completions") for m in caplog.messages)
    assert len(calls) == len(result.rounds) == 2
    for call, record in zip(calls, result.rounds):
        assert len(call["dataset"]) == 32  # TRL's dataset is the chunk (selection samples through its trainer)
        played = [call["dataset"][i] for block in call["schedule"] for i in block]
        assert set(played) == set(record["selected_ids"])  # ... its schedule plays exactly the selection
        assert call["seen"] == [i for i in played for _ in range(4)]  # ... and TRL sampled those, k completions each
        assert len(call["seen"]) == 2 * 4 * 4  # T steps × B problems × num_generations
    for record in result.rounds:
        assert record["selected_count"] == 8 and record["candidates"] == 32
        assert {"rollouts", "validation_rollouts", "scoring", "training", "evaluation"} <= set(record["timings"])
        assert 0 <= record["selected_corrupted_share"] <= 1
        # groups whose rewards differ on the same completion are never zero-variance (they hold two rewards)
        assert 0 <= record["inconsistent"] <= record["candidates"] - record["zero_variance"]
    out = tmp_path / "run"
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert {r["code"] for r in rounds} == {source_fingerprint(Path(gradalign.__file__).parent)}  # the code that ran
    for name in ("config.yaml", "initial.json", "metrics.jsonl", "problems/pool.jsonl", "selected/round-001.jsonl",
                 "checkpoints/round-001/model.safetensors", "checkpoints/round-001/optimizer.pt"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints/round-000/model.safetensors").exists()  # only the latest weights are kept
    # every greedy test answer is kept, in test order, and grading it again gives the round's accuracy
    test = [json.loads(line) for line in (out / "problems/test.jsonl").read_text().splitlines()]
    for name, accuracy in [("initial", json.loads((out / "initial.json").read_text())["accuracy"]),
                           *((f"round-{r['round']:03d}", r["test"]["accuracy"]) for r in rounds)]:
        answers = [json.loads(line) for line in (out / "answers" / f"{name}.jsonl").read_text().splitlines()]
        assert [a["id"] for a in answers] == [p["id"] for p in test] and {a["set"] for a in answers} == {"test"}
        regraded = [ExactMatch()(a["completion"], p["answer"]) for a, p in zip(answers, test)]
        assert regraded == [a["correct"] for a in answers] and np.mean(regraded) == accuracy
    assert "answers" not in rounds[0]["test"] and "answers" not in json.loads((out / "initial.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = [m["step"] for m in metrics if "test_accuracy" not in m]
    assert per_step == [1, 2, 3, 4]  # GRPO steps count on across rounds (TRL's own step restarts each round)


def test_optimizer_state_carries_across_rounds(tmp_path):
    import torch
    Curriculum(tiny_cfg(tmp_path, rounds=2)).run()
    state = torch.load(tmp_path / "run/checkpoints/round-001/optimizer.pt", weights_only=True)
    steps = {float(s["step"]) for s in state["state"].values()}
    assert steps == {4.0}  # 2 rounds × 2 steps on one AdamW, not 2 fresh optimisers


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg_kw = dict(rounds=3)
    reference = Curriculum(tiny_cfg(tmp_path, "whole", **cfg_kw)).run()

    real = trl_bridge.train_round
    state = {"calls": 0}

    def dies_in_round_1(*args, **kwargs):
        state["calls"] += 1
        if state["calls"] == 2:  # killed while training round 1, after its selection was made
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trl_bridge, "train_round", dies_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        Curriculum(tiny_cfg(tmp_path, "resumed", **cfg_kw)).run()
    out = tmp_path / "resumed"
    assert [json.loads(x)["round"] for x in (out / "rounds.jsonl").read_text().splitlines()] == [0]

    rounds_run = []
    monkeypatch.setattr(trl_bridge, "train_round", real)
    original = Curriculum.run_round
    monkeypatch.setattr(Curriculum, "run_round",
                        lambda self, r, *a: rounds_run.append(r) or original(self, r, *a))
    resumed = Curriculum(tiny_cfg(tmp_path, "resumed", **cfg_kw)).run()
    assert rounds_run == [1, 2]  # finished rounds are not redone
    for a, b in zip(reference.rounds, resumed.rounds):
        assert a["selected_ids"] == b["selected_ids"]
        assert a["test"]["accuracy"] == b["test"]["accuracy"]
    wa = load_file(str(tmp_path / "whole/checkpoints/round-002/model.safetensors"))
    wb = load_file(str(out / "checkpoints/round-002/model.safetensors"))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_runs_through_the_same_loop(tmp_path, method):
    result = Curriculum(tiny_cfg(tmp_path, rounds=1, steps_per_round=1, method=method)).run()
    record = result.rounds[0]
    assert record["method"] == method
    if method == "full":
        assert record["selected_count"] == 64 and "scores" not in record  # the whole pool, unscored
    else:
        assert 1 <= record["selected_count"] <= 8
        assert record["zero_variance"] >= 0
