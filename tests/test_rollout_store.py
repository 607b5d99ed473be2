"""The offline rollout store (`gradalign.policy.rollout_store`): round trips, re-padding, resume after a kill,
metadata checks and `concat_rollouts`, on an untrained tiny policy (instant to build, random completions)."""

from __future__ import annotations

import json

import pytest
import torch

from gradalign.data.problem import Problem
from gradalign.policy import rollout_store as rs
from gradalign.policy.rollout_store import (META, RolloutStore, collect_rollouts, concat_rollouts, model_hash,
                                            rollout_meta, shard_seed)
from gradalign.policy.rollouts import Rollouts, SamplingConfig, sample_rollouts
from gradalign.policy.tiny import build_tiny_model, build_tokenizer
from gradalign.rewards import ProblemReward, get_verifier

SAMPLING = SamplingConfig(temperature=0.5, top_p=1.0, max_new_tokens=4)
K, SEED = 3, 11
# Prompt lengths vary so that shards differ in width; coin-corrupted problems give rewards of both values.
PROMPTS = ["1+1=", "12+34=", "5=", "123+456=", "7-2=", "99+1=", "3*4=", "100-10="]
PROBLEMS = [Problem(id=f"q{i}", prompt=p, answer=str(eval(p[:-1])), metadata={"corrupted": i % 2 == 1})
            for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def policy():
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, hidden=32, layers=1, heads=2, intermediate=64)
    return model, tokenizer


@pytest.fixture(scope="module")
def reward():
    return ProblemReward(get_verifier("exact"), seed=0)


def meta_for(model, seed: int = SEED) -> dict:
    return rollout_meta("tiny-untrained", model, K, SAMPLING, seed, "exact")


def collect(path, policy, reward, problems=PROBLEMS, seed: int = SEED, shard_size: int = 2) -> RolloutStore:
    model, tokenizer = policy
    store = RolloutStore.open_or_create(path, meta_for(model, seed))
    return collect_rollouts(store, model, tokenizer, problems, reward, SAMPLING, seed, shard_size=shard_size)


def by_problem(r: Rollouts) -> dict[str, list[tuple]]:
    """Every rollout without its padding, keyed by problem: independent of widths and row order."""
    out: dict[str, list[tuple]] = {pid: [] for pid in r.problem_ids}
    for i, g in enumerate(r.group.tolist()):
        pm, cm = r.prompt_mask[i].bool(), r.completion_mask[i].bool()
        out[r.problem_ids[g]].append((r.prompt_ids[i][pm].tolist(), r.completion_ids[i][cm].tolist(),
                                      r.sample_logps[i][cm].tolist(), float(r.rewards[i]), r.completions[i]))
    return out


def assert_same(a: Rollouts, b: Rollouts) -> None:
    """Bit-for-bit equality of two rollout sets."""
    assert a.problem_ids == b.problem_ids and a.completions == b.completions and a.temperature == b.temperature
    for key in rs.TENSORS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and torch.equal(x, y), key


def assert_padding(r: Rollouts, pad_id: int) -> None:
    """Left-padded prompts, right-padded completions, padding filled with `pad_id` (ids) and 0 (log-probs)."""
    for mask, ids in ((r.prompt_mask, r.prompt_ids), (r.completion_mask, r.completion_ids)):
        assert (ids[mask == 0] == pad_id).all()
    assert (r.sample_logps[r.completion_mask == 0] == 0).all()
    assert (r.prompt_mask.flip(1).cummin(1).values == r.prompt_mask.flip(1)).all()  # ones, then zeros, from the right
    assert (r.completion_mask.cummin(1).values == r.completion_mask).all()


# ───────────────────────────────────────────────────────────────────────────────── store round trip


def test_round_trip_of_every_tensor_and_text(tmp_path, policy, reward):
    model, tokenizer = policy
    collect(tmp_path / "s", policy, reward, shard_size=3)
    # What the shards must hold: one `sample_rollouts` per shard of 3, with the shard's own seed.
    parts = [sample_rollouts(model, tokenizer, PROBLEMS[i:i + 3], K, reward, SAMPLING, seed=shard_seed(SEED, f"q{i}"))
             for i in (0, 3, 6)]
    assert len({p.prompt_ids.shape[1] for p in parts}) > 1  # the widths really differ across shards
    rewards = torch.cat([p.rewards for p in parts])
    assert 0 < rewards.sum() < len(rewards)  # both reward values occur

    again = RolloutStore.open(tmp_path / "s", expect=meta_for(model))
    assert len(again) == 8 and again.done_ids() == {p.id for p in PROBLEMS}
    loaded = again.load(pad_id=tokenizer.pad_token_id)
    assert_same(loaded, concat_rollouts(parts, tokenizer.pad_token_id))
    assert by_problem(loaded) == {k: v for p in parts for k, v in by_problem(p).items()}
    assert loaded.prompt_ids.shape[1] == max(p.prompt_ids.shape[1] for p in parts)
    assert_padding(loaded, tokenizer.pad_token_id)
    assert loaded.temperature == 0.5 and loaded.group.dtype == torch.long and loaded.rewards.dtype == torch.float32

    meta = json.loads((tmp_path / "s" / META).read_text())
    assert meta["shards"] == ["shard-00000", "shard-00001", "shard-00002"]
    assert {k: meta[k] for k in ("model", "k", "temperature", "top_p", "max_new_tokens", "seed", "verifier")} == {
        "model": "tiny-untrained", "k": 3, "temperature": 0.5, "top_p": 1.0, "max_new_tokens": 4, "seed": SEED,
        "verifier": "exact"}
    assert "top-p" in meta["logps"] and "tempered" in meta["logps"]


def test_load_ids_in_the_given_order(tmp_path, policy, reward):
    store = collect(tmp_path / "s", policy, reward)
    everything = by_problem(store.load(pad_id=7))
    ids = ["q6", "q1", "q4"]  # from three different shards, out of store order
    sub = store.load(ids, pad_id=7)
    assert sub.problem_ids == ids
    assert by_problem(sub) == {i: everything[i] for i in ids}
    assert torch.bincount(sub.group).tolist() == [K, K, K]
    assert_padding(sub, 7)
    with pytest.raises(ValueError, match=r"rollout store has no problem 'q99'"):
        store.load(["q1", "q99"])


# ───────────────────────────────────────────────────────────────────────────────── resume


def test_resumed_collection_equals_an_uninterrupted_one(tmp_path, policy, reward, monkeypatch):
    whole = collect(tmp_path / "whole", policy, reward).load()
    collect(tmp_path / "resumed", policy, reward, problems=PROBLEMS[:4])
    calls = []
    monkeypatch.setattr(rs, "sample_rollouts", lambda *a, **kw: calls.append(a[2]) or sample_rollouts(*a, **kw))
    resumed = collect(tmp_path / "resumed", policy, reward)
    assert [[p.id for p in batch] for batch in calls] == [["q4", "q5"], ["q6", "q7"]]  # only the missing ones
    assert_same(resumed.load(), whole)
    # ... and the seed matters, so the equality above is not vacuous.
    other = collect(tmp_path / "other", policy, reward, seed=SEED + 1).load()
    assert other.completions != whole.completions


def test_unlisted_shard_after_a_kill_is_ignored_and_overwritten(tmp_path, policy, reward, monkeypatch):
    path = tmp_path / "s"
    collect(path, policy, reward, problems=PROBLEMS[:2])
    real_write_json = rs.write_json

    def killed_at_meta(file, obj):
        if file.name == META:
            raise KeyboardInterrupt("killed before the metadata listed the shard")
        real_write_json(file, obj)

    monkeypatch.setattr(rs, "write_json", killed_at_meta)
    with pytest.raises(KeyboardInterrupt):
        collect(path, policy, reward, problems=PROBLEMS[:4])
    monkeypatch.undo()
    assert (path / "shard-00001.safetensors").exists() and (path / "shard-00001.json").exists()  # on disk ...
    reopened = RolloutStore.open(path)
    assert len(reopened) == 2 and reopened.done_ids() == {"q0", "q1"}  # ... but not trusted
    assert reopened.load().problem_ids == ["q0", "q1"]

    # Simulate a stale unlisted shard holding other problems: the resumed run overwrites it.
    stale = json.loads((path / "shard-00001.json").read_text())
    (path / "shard-00001.json").write_text(json.dumps({**stale, "problem_ids": ["junk-a", "junk-b"]}))
    resumed = collect(path, policy, reward).load()
    assert_same(resumed, collect(tmp_path / "whole", policy, reward).load())


# ───────────────────────────────────────────────────────────────────────────────── metadata checks


@pytest.mark.parametrize("key, value", [("temperature", 1.0), ("model_hash", "0123456789abcdef"), ("k", 8)])
def test_open_with_differing_metadata_names_the_key(tmp_path, policy, key, value):
    model, _ = policy
    RolloutStore.create(tmp_path / "s", meta_for(model))
    with pytest.raises(ValueError, match=rf"meta\.json: metadata '{key}' is .*, expected"):
        RolloutStore.open(tmp_path / "s", expect={**meta_for(model), key: value})
    with pytest.raises(ValueError, match=rf"meta\.json: metadata '{key}'"):
        RolloutStore.open_or_create(tmp_path / "s", {**meta_for(model), key: value})


def test_collect_refuses_another_model_or_sampling(tmp_path, policy, reward):
    model, tokenizer = policy
    store = RolloutStore.create(tmp_path / "s", meta_for(model))
    other = build_tiny_model(tokenizer, seed=1, hidden=32, layers=1, heads=2, intermediate=64)
    with pytest.raises(ValueError, match=r"meta\.json: metadata 'model_hash'"):
        collect_rollouts(store, other, tokenizer, PROBLEMS, reward, SAMPLING, SEED)
    hotter = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"meta\.json: metadata 'temperature'"):
        collect_rollouts(store, model, tokenizer, PROBLEMS, reward, hotter, SEED)
    with pytest.raises(ValueError, match=r"meta\.json: metadata 'seed'"):
        collect_rollouts(store, model, tokenizer, PROBLEMS, reward, SAMPLING, SEED + 1)
    assert len(store) == 0


def test_create_validates_metadata(tmp_path, policy):
    model, _ = policy
    meta = meta_for(model)
    with pytest.raises(ValueError, match="metadata needs verifier"):
        RolloutStore.create(tmp_path / "a", {k: v for k, v in meta.items() if k != "verifier"})
    with pytest.raises(ValueError, match="'shards' is maintained by the store"):
        RolloutStore.create(tmp_path / "b", {**meta, "shards": []})
    RolloutStore.create(tmp_path / "c", meta)
    with pytest.raises(ValueError, match="a rollout store already exists"):
        RolloutStore.create(tmp_path / "c", meta)
    with pytest.raises(ValueError, match="no rollout store here"):
        RolloutStore.open(tmp_path / "missing")


def test_append_refuses_problems_already_stored(tmp_path, policy, reward):
    store = collect(tmp_path / "s", policy, reward, problems=PROBLEMS[:2])
    with pytest.raises(ValueError, match="problem 'q1' already has rollouts"):
        store.append(store.load(["q1"]))
    assert len(RolloutStore.open(tmp_path / "s")) == 2


# ───────────────────────────────────────────────────────────────────────────────── concat_rollouts


def hand_rollouts(ids: list[str], prompt_width: int, completion_width: int, temperature: float = 0.5) -> Rollouts:
    """Two rows per problem; every row's prompt / completion fills its width (so padding shows up on concat)."""
    n = 2 * len(ids)
    return Rollouts(
        problem_ids=ids, group=torch.arange(len(ids)).repeat_interleave(2),
        prompt_ids=torch.full((n, prompt_width), 5), prompt_mask=torch.ones(n, prompt_width, dtype=torch.long),
        completion_ids=torch.full((n, completion_width), 6),
        completion_mask=torch.ones(n, completion_width, dtype=torch.long),
        sample_logps=torch.full((n, completion_width), -0.5), rewards=torch.arange(n, dtype=torch.float32),
        completions=[f"{i}" for i in range(n)], temperature=temperature,
    )


def test_concat_repads_and_offsets_groups():
    a, b = hand_rollouts(["a"], 2, 3), hand_rollouts(["b", "c"], 4, 1)
    cat = concat_rollouts([a, b], pad_id=9)
    assert cat.problem_ids == ["a", "b", "c"]
    assert cat.group.tolist() == [0, 0, 1, 1, 2, 2]
    assert cat.prompt_ids.tolist()[:2] == [[9, 9, 5, 5]] * 2 and cat.prompt_ids.tolist()[2:] == [[5] * 4] * 4
    assert cat.prompt_mask.tolist()[:2] == [[0, 0, 1, 1]] * 2
    assert cat.completion_ids.tolist()[2:] == [[6, 9, 9]] * 4 and cat.completion_mask.tolist()[2:] == [[1, 0, 0]] * 4
    assert cat.sample_logps.tolist()[2:] == [[-0.5, 0.0, 0.0]] * 4
    assert cat.rewards.tolist() == [0, 1, 0, 1, 2, 3]
    assert cat.completions == ["0", "1", "0", "1", "2", "3"]
    assert cat.pass_rates().tolist() == [0.5, 0.5, 2.5]


def test_concat_errors():
    with pytest.raises(ValueError, match="different temperatures"):
        concat_rollouts([hand_rollouts(["a"], 2, 2), hand_rollouts(["b"], 2, 2, temperature=1.0)], pad_id=0)
    with pytest.raises(ValueError, match="problem 'b' appears in more than one"):
        concat_rollouts([hand_rollouts(["a", "b"], 2, 2), hand_rollouts(["b"], 2, 2)], pad_id=0)
    with pytest.raises(ValueError, match="no rollouts to concatenate"):
        concat_rollouts([], pad_id=0)


def test_concat_rewrites_every_padding_position_with_pad_id():
    a = hand_rollouts(["a"], 3, 3)
    a.prompt_mask[0, 0] = 0  # row 0 has a shorter prompt and completion, padded with 0 ...
    a.prompt_ids[0, 0] = 0
    a.completion_mask[0, 2] = 0
    a.completion_ids[0, 2] = 0
    cat = concat_rollouts([a], pad_id=9)  # ... which become 9, like the new columns
    assert cat.prompt_ids[0].tolist() == [9, 5, 5] and cat.completion_ids[0].tolist() == [6, 6, 9]
    assert cat.sample_logps[0].tolist() == [-0.5, -0.5, 0.0]
    assert torch.equal(cat.prompt_mask, a.prompt_mask) and torch.equal(cat.completion_mask, a.completion_mask)


def test_model_hash_tracks_the_trainable_weights():
    a, b = build_tiny_model(build_tokenizer(), seed=0), build_tiny_model(build_tokenizer(), seed=0)
    assert model_hash(a) == model_hash(b)  # same weights, same hash: a reopened store accepts the same policy
    with torch.no_grad():
        next(b.parameters()).add_(1e-6)  # one step of training changes it: the store refuses a moved policy
    assert model_hash(a) != model_hash(b)
