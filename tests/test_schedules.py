"""Selection rollouts that training consumes (`reuse_rollouts`), the batch schedule, and the cost ledger they fill:
through the real TRL GRPOTrainer on the warm-started tiny policy, checked against what TRL actually trained on."""

import contextlib
import math

import numpy as np
import pytest
import torch
from trl import GRPOTrainer

from gradalign.config import ConfigError, RunConfig
from gradalign.curriculum import batch as batch_mod
from gradalign.curriculum import ledger as ledger_mod
from gradalign.curriculum import trl_bridge
from gradalign.curriculum.loop import Curriculum
from gradalign.curriculum.round import RoundSelector
from gradalign.curriculum.trl_bridge import Replay, shared_replay
from gradalign.selection.diagnostics import read_scores

pytestmark = pytest.mark.slow

K, B, T = 4, 4, 2  # num_generations, problems per step, steps per round


def tiny_cfg(tmp_path, name="run", **kw) -> RunConfig:
    base = dict(output_dir=str(tmp_path / name), pool_size=64, validation_size=8, test_size=16, chunk_size=32,
                selection_ratio=4, rollouts_per_problem=K, validation_rollouts=K, rounds=2, steps_per_round=T,
                problems_per_step=B, num_generations=K, eval_samples=0, method="gradalign-z")
    return RunConfig.of(**{**base, **kw})


@pytest.fixture
def spy(monkeypatch):
    """Records every selection, every generation TRL trained on (prompt ids, completion ids, step), every call
    that really generated for training (TRL's own `_generate_single_turn` under the trainer's generation) and every
    one selection made (the same TRL method, called by `TrainerSampler`)."""
    seen = {"selections": [], "trained": [], "generate_calls": 0, "selection_calls": 0, "training": False}
    select = RoundSelector.select
    monkeypatch.setattr(RoundSelector, "select",
                        lambda self, *a, **kw: seen["selections"].append(select(self, *a, **kw))
                        or seen["selections"][-1])
    ours = trl_bridge.ScheduledGRPOTrainer._generate_single_turn

    def recording(self, prompt_ids, *a, **kw):
        seen["training"] = True
        try:
            completions, logprobs = ours(self, prompt_ids, *a, **kw)
        finally:
            seen["training"] = False
        seen["trained"].append((list(map(tuple, prompt_ids)), [list(c) for c in completions], self.state.global_step))
        return completions, logprobs
    monkeypatch.setattr(trl_bridge.ScheduledGRPOTrainer, "_generate_single_turn", recording)
    trl_generate = GRPOTrainer._generate_single_turn

    def counting(self, *a, **kw):
        seen["generate_calls" if seen["training"] else "selection_calls"] += 1
        g = self.generation_config
        seen.setdefault("settings", set()).add((g.temperature, g.top_p, g.top_k, g.repetition_penalty,
                                                g.max_new_tokens, g.no_repeat_ngram_size))
        return trl_generate(self, *a, **kw)
    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", counting)
    return seen


def sampled(selection, problems) -> dict[tuple, list[list[int]]]:
    """What selection sampled for `problems` (indices into its chunk), by prompt: the independent reading of the
    rollouts (masks applied here, not by `completion_groups`)."""
    r = selection.rollouts
    out = {}
    for p in problems:
        rows = [i for i, g in enumerate(r.group.tolist()) if g == int(p)]
        key = tuple(r.prompt_ids[rows[0]][r.prompt_mask[rows[0]] == 1].tolist())
        out.setdefault(key, []).extend(r.completion_ids[i][r.completion_mask[i] == 1].tolist() for i in rows)
    return out


def trained_groups(prompt_ids, completions) -> dict[tuple, list[list[int]]]:
    out = {}
    for key, c in zip(prompt_ids, completions):
        out.setdefault(key, []).append(c)
    return out


def test_the_first_step_trains_on_the_selection_rollouts_and_generates_nothing_for_them(tmp_path, spy):
    result = Curriculum(tiny_cfg(tmp_path)).run()
    assert len(spy["selections"]) == 2 and len(spy["trained"]) == 2 * T
    assert spy["generate_calls"] == 2 * (T - 1)  # one generation per round is the selection's own rollouts
    for r, (selection, record) in enumerate(zip(spy["selections"], result.rounds)):
        prompts, completions, step = spy["trained"][r * T]
        assert step == 0  # the round's first step: the weights the selection sampled with
        groups, selected = trained_groups(prompts, completions), sampled(selection, selection.selected)
        assert len(groups) == B and all(groups[key] == selected[key] for key in groups)
        cost = record["cost"]
        assert cost["reused"]["completions"] == B * K
        assert cost["reused"]["tokens"] == sum(len(c) for c in completions)
        assert cost["generated"]["training"]["completions"] == (T - 1) * B * K
        later = spy["trained"][r * T + 1][1]
        assert cost["generated"]["training"]["tokens"] == sum(len(c) for c in later)
        assert cost["generated"]["candidates"]["completions"] == 32 * K
        assert cost["generated"]["validation"]["completions"] == 8 * K


@pytest.mark.parametrize("schedule", ["rounds", "batch"])
def test_selection_samples_through_the_round_trainer_with_the_training_settings(tmp_path, spy, schedule):
    """Settings only TRL applies (top_k, repetition_penalty, generation_kwargs) reach selection too: it samples
    with the round's own trainer, so training still takes the selected groups instead of sampling them again."""
    result = Curriculum(tiny_cfg(tmp_path, schedule=schedule, rounds=1, top_k=5, repetition_penalty=1.1,
                                 generation_kwargs={"no_repeat_ngram_size": 3})).run()
    assert spy["settings"] == {(0.7, 0.95, 5, 1.1, 6, 3)}  # every call, selection's and training's
    cost = result.rounds[0]["cost"]
    if schedule == "rounds":  # one block of candidates and one of validation problems; the first step reused
        assert spy["selection_calls"] == 2 and spy["generate_calls"] == T - 1
        assert cost["reused"]["completions"] == B * K
    else:  # the validation block, then each step's candidates; training never samples
        assert spy["selection_calls"] == 1 + T and spy["generate_calls"] == 0
        assert cost["reused"]["completions"] == T * B * K


def test_reuse_off_samples_every_training_step(tmp_path, spy):
    result = Curriculum(tiny_cfg(tmp_path, reuse_rollouts=False)).run()
    assert spy["generate_calls"] == 2 * T
    for record in result.rounds:
        assert record["cost"]["reused"]["completions"] == 0
        assert record["cost"]["generated"]["training"]["completions"] == T * B * K


def test_fewer_selection_rollouts_than_a_training_group_are_not_reused(tmp_path, spy):
    result = Curriculum(tiny_cfg(tmp_path, rollouts_per_problem=2, rounds=1)).run()
    assert spy["generate_calls"] == T and result.rounds[0]["cost"]["reused"]["completions"] == 0


def test_the_batch_schedule_trains_each_step_on_its_best_candidates_with_their_own_rollouts(tmp_path, spy):
    cfg = tiny_cfg(tmp_path, schedule="batch", oversample=2.0)
    result = Curriculum(cfg).run()
    per_step = math.ceil(2.0 * B)
    assert spy["generate_calls"] == 0  # training never samples: every group is a selection's
    assert len(spy["selections"]) == len(spy["trained"]) == 2 * T
    for selection, (prompts, completions, step) in zip(spy["selections"], spy["trained"]):
        assert len(selection.candidates) == per_step
        groups, picked = trained_groups(prompts, completions), selection.selected
        assert len(groups) == B
        if len(picked) == B:  # otherwise filled up with zero-variance candidates (counted in the record)
            assert groups == sampled(selection, picked)
        others = np.setdiff1d(np.flatnonzero(~selection.candidates.zero_variance), picked)
        if len(others):  # the best-scored eligible candidates, by the method's own scores
            assert selection.scores[picked].min() >= selection.scores[others].max()
    for r, record in enumerate(result.rounds):
        cost = record["cost"]
        assert record["batch"]["steps"] == T and record["candidates"] == T * per_step
        assert cost["generated"]["candidates"]["completions"] == T * per_step * K
        assert cost["generated"]["training"]["completions"] == 0
        assert cost["reused"]["completions"] == T * B * K
        assert cost["generated"]["validation"]["completions"] == 8 * K  # measured once per round
        assert len(record["selected_ids"]) == T * B
    expected = (2 * T * (per_step - B) * K + 2 * 8 * K) / (2 * T * B * K)
    assert ledger_mod.selection_per_training(result.rounds) == pytest.approx(expected)


def test_unpadded_batch_steps_train_only_on_the_chosen_groups_that_can_teach(tmp_path, spy, monkeypatch):
    """`pad_steps: false`: each step trains on its selection's groups whose rewards vary and rewarded no answer two
    ways, with their own rollouts; proven noise and zero-variance groups are neither trained
    on nor paid for (a step with none trains on one zero-variance group). Coin-flip rewards make both kinds. With
    `scale_short_steps` each optimiser step runs at the learning rate × (its groups that can teach) / B, read off
    the optimiser at the step itself."""
    stepped = []  # the learning rate each optimiser step ran at (a hook after the scaling one)
    scaled = batch_mod.scaled_learning_rate

    @contextlib.contextmanager
    def recording(optimizer, scale):
        with scaled(optimizer, scale):
            hook = optimizer.register_step_pre_hook(lambda opt, a, kw: stepped.append(opt.param_groups[0]["lr"]))
            try:
                yield
            finally:
                hook.remove()
    monkeypatch.setattr(batch_mod, "scaled_learning_rate", recording)
    cfg = tiny_cfg(tmp_path, method="gradalign-lfdr", schedule="batch", oversample=2.0, rounds=2,
                   scenario="unreliable-rewards", pad_steps=False, scale_short_steps=True)
    result = Curriculum(cfg).run()
    assert spy["generate_calls"] == 0 and len(spy["selections"]) == len(spy["trained"]) == 2 * T
    sizes, teaching, chosen = [], [], []  # chosen: the method's choices each step trained on (candidate ids)
    for selection, (prompts, completions, _) in zip(spy["selections"], spy["trained"]):
        c = selection.candidates
        teach = [int(i) for i in selection.selected if not c.zero_variance[i] and not c.inconsistent[i]]
        groups = trained_groups(prompts, completions)
        idle = np.flatnonzero(c.zero_variance)
        expected = teach or (idle[:1] if len(idle) else selection.selected[:1])
        assert groups == sampled(selection, expected)
        sizes.append(len(groups))
        teaching.append(len(teach))
        chosen.append([c.ids[i] for i in expected if i in selection.selected])
    assert min(sizes) < B  # the run made short steps: the rule was exercised
    lr = cfg.grpo.learning_rate
    assert stepped == pytest.approx([lr * n / B for n in teaching], rel=1e-12)  # one multiplication in float64
    for r, record in enumerate(result.rounds):
        step_sizes = sizes[r * T:(r + 1) * T]
        cost = record["cost"]
        assert record["batch"]["groups_trained"] == sum(step_sizes) == len(record["selected_ids"])
        assert record["batch"]["learning_rate_scales"] == [n / B for n in teaching[r * T:(r + 1) * T]]
        assert cost["reused"]["completions"] == sum(step_sizes) * K and cost["generated"]["training"]["completions"] == 0
        # the round's selection (scores table, diagnostics) is what was trained, not the groups a step declined
        ids = [i for step in chosen[r * T:(r + 1) * T] for i in step]
        rows = read_scores(tmp_path / "run" / "scores" / f"round-{r:03d}.csv")
        assert sorted(row["id"] for row in rows if row["selected"] == "True") == sorted(ids)
        corrupted = {row["id"]: row["corrupted"] == "True" for row in rows}
        assert record["diagnostics"]["labels"]["corrupted"]["selected_good_share"] == pytest.approx(
            np.mean([not corrupted[i] for i in ids]), abs=1e-12)  # a mean of at most 2T·B booleans


def test_a_short_step_draws_again_until_b_groups_can_teach(tmp_path, spy):
    """`max_draws`: a step whose chosen groups that can teach number fewer than B rolls out the next candidates of
    the stream and adds the best of them (keeping at most the B it lacks), until it has B or has drawn max_draws
    times; it trains on every draw's chosen groups with their own rollouts, and every draw is paid for. Read off
    the selections TRL's steps were given, draw by draw (coin-flip rewards make short draws)."""
    D = 3
    cfg = tiny_cfg(tmp_path, method="gradalign-lfdr", schedule="batch", oversample=2.0, scenario="unreliable-rewards",
                   pad_steps=False, max_draws=D)
    result = Curriculum(cfg).run()
    per_step = math.ceil(2.0 * B)
    selections = iter(spy["selections"])
    draws_per_step, sizes = [], []
    for prompts, completions, _ in spy["trained"]:
        expected: dict[tuple, list[list[int]]] = {}
        have, draws = 0, 0
        while draws == 0 or (have < B and draws < D):
            selection = next(selections)
            c = selection.candidates
            assert len(c) == per_step and len(selection.selected) <= B - have  # a refill keeps only what is lacking
            teach = [int(i) for i in selection.selected if not c.zero_variance[i] and not c.inconsistent[i]]
            for key, group in sampled(selection, teach).items():
                expected.setdefault(key, []).extend(group)
            have, draws = have + len(teach), draws + 1
        if have:  # a step with nothing to teach trains on one idle group (the unpadded test checks it)
            assert trained_groups(prompts, completions) == expected
        assert len(trained_groups(prompts, completions)) <= B
        draws_per_step.append(draws)
        sizes.append(len(trained_groups(prompts, completions)))
    assert next(selections, None) is None  # no draw the steps did not ask for
    assert max(draws_per_step) > 1  # the run refilled: the rule was exercised
    for r, record in enumerate(result.rounds):
        draws = draws_per_step[r * T:(r + 1) * T]
        assert record["batch"]["draws"] == draws and record["candidates"] == sum(draws) * per_step
        assert record["cost"]["generated"]["candidates"]["completions"] == sum(draws) * per_step * K
        assert record["batch"]["groups_trained"] == sum(sizes[r * T:(r + 1) * T]) == len(record["selected_ids"])
        assert record["cost"]["reused"]["completions"] == sum(sizes[r * T:(r + 1) * T]) * K


def test_max_draws_needs_unpadded_batch_steps():
    with pytest.raises(ConfigError, match="max_draws.*pad_steps True"):
        RunConfig.of(schedule="batch", max_draws=2)
    with pytest.raises(ConfigError, match="max_draws.*schedule rounds"):
        RunConfig.of(pad_steps=False, max_draws=2)
    with pytest.raises(ConfigError, match="max_draws.*must be >= 1"):
        RunConfig.of(max_draws=0)


def test_a_scaled_step_is_adamw_at_the_scaled_rate_and_the_rate_comes_back():
    """`scaled_learning_rate` against AdamW built at lr × s (fresh random weights and gradients, three steps at
    different scales, 0 included): the same weights to float32 rounding of a few operations per element (rtol
    1e-6), the base rate back after every step, and no hook left on the optimiser afterwards."""
    torch.manual_seed(7)
    weights = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(3)]
    scales = [0.25, 0.0, 0.75]
    ours = torch.nn.Parameter(weights.clone())
    optimizer = torch.optim.AdamW([ours], lr=1e-2, weight_decay=0.1)
    current = []
    with trl_bridge.scaled_learning_rate(optimizer, lambda: current[-1]):
        for g, s in zip(grads, scales):
            current.append(s)
            ours.grad = g.clone()
            optimizer.step()
            assert optimizer.param_groups[0]["lr"] == 1e-2
    ref = torch.nn.Parameter(weights.clone())
    reference = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    for g, s in zip(grads, scales):
        reference.param_groups[0]["lr"] = 1e-2 * s
        ref.grad = g.clone()
        reference.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours.detach(), weights)
    ours.grad = grads[0].clone()
    before = ours.detach().clone()
    current.append(0.0)  # outside the context the scale is not read any more: a full step
    optimizer.step()
    assert not torch.equal(ours.detach(), before)


def test_scale_short_steps_needs_unpadded_batch_steps():
    with pytest.raises(ConfigError, match="scale_short_steps.*pad_steps True"):
        RunConfig.of(schedule="batch", scale_short_steps=True)
    with pytest.raises(ConfigError, match="scale_short_steps.*schedule rounds"):
        RunConfig.of(pad_steps=False, scale_short_steps=True)


def test_steps_the_gradient_free_checks_decide_pay_for_no_gradient_and_no_validation_rollouts(tmp_path, spy):
    """gradalign-lfdr keeps every consistent eligible candidate when no more than B are left (`decide_early`). With
    B candidates a step (oversample 1) that is always so: no step scores, and after the run's first direction
    (measured at once, so that a validation set without one fails first) no round generates validation rollouts.
    With 3B a step, the steps that must rank candidates score them against one direction, measured once in the
    round when the first of them needs it."""
    result = Curriculum(tiny_cfg(tmp_path, name="decided", method="gradalign-lfdr", schedule="batch",
                                 oversample=1.0, rounds=2)).run()
    assert [r["cost"]["generated"]["validation"]["completions"] for r in result.rounds] == [8 * K, 0]
    # the only backward passes of selection: the first direction's
    assert [r["cost"]["forward_backward_tokens"]["scoring"] > 0 for r in result.rounds] == [True, False]
    for record in result.rounds:
        assert record["batch"]["scored"] == 0 and record["scored"] is False and record["timings"]["scoring"] == 0
    for selection in spy["selections"]:
        c = selection.candidates
        assert not selection.scored and c.dot_val is None
        consistent = np.flatnonzero(~c.zero_variance & ~c.inconsistent)
        assert set(consistent.tolist()) <= set(selection.selected.tolist())  # all of them, whatever their gradients
    spy["selections"].clear()
    result = Curriculum(tiny_cfg(tmp_path, name="scored", method="gradalign-lfdr", schedule="batch",
                                 oversample=3.0, rounds=2)).run()
    for r, record in enumerate(result.rounds):
        steps = spy["selections"][r * T:(r + 1) * T]
        scored = [s.scored for s in steps]
        assert record["batch"]["scored"] == sum(scored)
        measured = record["cost"]["generated"]["validation"]["completions"]
        assert measured == (8 * K if any(scored) or r == 0 else 0)
        assert all((s.candidates.dot_val is not None) == s.scored for s in steps)
    assert sum(r["batch"]["scored"] for r in result.rounds) > 0  # 12 candidates, 4 kept: the gradients decided


@pytest.mark.parametrize("schedule", ["rounds", "batch"])
def test_a_stale_direction_is_measured_every_validation_every_rounds(tmp_path, spy, schedule):
    result = Curriculum(tiny_cfg(tmp_path, schedule=schedule, validation_every=2, rounds=3)).run()
    measured = [r["cost"]["generated"]["validation"]["completions"] for r in result.rounds]
    assert measured == [8 * K, 0, 8 * K]
    assert [r["timings"]["validation_rollouts"] > 0 for r in result.rounds] == [True, False, True]


def test_methods_without_scores_sample_nothing_for_selection(tmp_path, spy):
    for method in ("random", "full"):
        result = Curriculum(tiny_cfg(tmp_path, name=method, method=method, schedule="batch", rounds=1)).run()
        cost = result.rounds[0]["cost"]
        assert sum(c["completions"] for p, c in cost["generated"].items() if p != "training") == 0
        assert cost["generated"]["training"]["completions"] == T * B * K
        assert ledger_mod.selection_per_training(result.rounds) == 0


def test_the_gradient_free_checks_alone_pay_for_candidates_only_and_record_no_scoring(tmp_path, spy):
    """`consistent` on the batch schedule: no validation rollout, no backward pass for selection, `scored` false, and
    each step trains on its consistent groups first (what a user compares the default against)."""
    result = Curriculum(tiny_cfg(tmp_path, method="consistent", schedule="batch", rounds=1,
                                 scenario="unreliable-rewards")).run()
    record = result.rounds[0]
    cost = record["cost"]
    assert cost["generated"]["validation"]["completions"] == 0 and cost["forward_backward_tokens"]["scoring"] == 0
    assert record["scored"] is False and record["batch"]["scored"] == 0
    for selection in spy["selections"]:
        c = selection.candidates
        teach = ~c.zero_variance & ~c.inconsistent
        first = selection.selected[:int(teach.sum())]
        assert teach[first].all() and not selection.scored


def test_sequential_sampling_completes_only_the_groups_that_disagree(tmp_path, spy):
    result = Curriculum(tiny_cfg(tmp_path, sequential_rollouts=2, rounds=1)).run()
    selection = spy["selections"][0]
    r = selection.rollouts
    sizes = np.bincount(r.group.numpy(), minlength=r.num_problems)
    rewards = [r.rewards[r.group == i].tolist() for i in range(r.num_problems)]
    first_disagree = np.array([len(set(x[:2])) > 1 for x in rewards])  # each group's first two rows: the first pass
    assert np.array_equal(sizes, np.where(first_disagree, K, 2))
    assert np.array_equal(selection.candidates.zero_variance, ~first_disagree)
    assert sizes[selection.selected].min() == K  # only complete groups are eligible, so training can reuse them
    cost = result.rounds[0]["cost"]
    assert cost["generated"]["candidates"]["completions"] == int(sizes.sum()) < 32 * K
    assert cost["reused"]["completions"] == B * K and spy["generate_calls"] == T - 1


def test_a_batch_filled_up_with_short_groups_generates_only_their_completions(tmp_path, spy):
    result = Curriculum(tiny_cfg(tmp_path, schedule="batch", sequential_rollouts=2, oversample=1.0, rounds=1,
                                 scenario="low-utility")).run()
    record = result.rounds[0]
    filled, cost = record["batch"]["filled"], record["cost"]
    assert filled > 0  # low utility: most candidates solve or fail both first completions
    assert cost["generated"]["training"]["completions"] == filled * K  # their groups had 2 of the K a step needs
    assert cost["reused"]["completions"] + cost["generated"]["training"]["completions"] == T * B * K


def test_replay_is_all_or_nothing_per_prompt():
    groups = {(1, 2): [[5, 0], [6, 0]], (3,): [[7, 0]]}
    replay = Replay({k: list(v) for k, v in groups.items()})
    assert replay.take([[1, 2], [1, 2], [3], [3]]) == [[5, 0], [6, 0], None, None]  # (3,) has one of the two
    assert replay.groups == {(1, 2): [], (3,): [[7, 0]]}  # the refused prompt kept its completion
    assert replay.take([[3], [9]]) == [[7, 0], None]
    assert replay.take([[1, 2]]) == [None]


def test_processes_sharing_a_generation_each_replay_their_own_rows_of_every_group():
    """Two processes' shards of the selection groups; the generation's rows split 3 + 3 across them: each group's
    completions are trained on exactly once, in order, whichever process holds the row."""
    parts = [{(1,): [[10], [11], [12]]}, {(2,): [[20], [21], [22]]}]
    keys = [(1,), (1,), (1,), (2,), (2,), (2,)]
    first, second = (shared_replay(parts, keys, share, step=3) for share in (slice(0, 3), slice(3, 6)))
    assert first.step == 3 and first.take([[1], [1], [1]]) == [[10], [11], [12]]
    assert second.take([[2], [2], [2]]) == [[20], [21], [22]]
    keys = [(1,), (1,), (2,), (2,)]  # rows of one group on both processes
    assert shared_replay(parts, keys, slice(0, 2), 0).groups == {(1,): [[10], [11]]}
    assert shared_replay(parts, [(1,), (2,), (1,), (2,)], slice(2, 4), 0).groups == {(1,): [[11]], (2,): [[21]]}
    assert shared_replay(parts, [(1,)] * 4, slice(0, 2), 0) is None  # a row short: both processes generate all


@pytest.mark.parametrize("values, message", [
    (dict(oversample=0.5), "'oversample' must be >= 1"),
    (dict(schedule="sometimes"), "'schedule' must be one of rounds, batch"),
    (dict(schedule="batch", use_vllm=True), "'schedule' batch trains only on its selection rollouts, and TRL's vLLM "
                                            "importance-sampling correction needs each completion's vLLM log-probs"),
    (dict(validation_every=0), "'validation_every' must be >= 1"),
])
def test_bad_schedule_options_are_refused_in_one_line(values, message):
    with pytest.raises(ValueError) as e:
        RunConfig.of(**values)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_warm_ups_and_offline_rollouts_are_booked_as_selection(tmp_path):
    learn = Curriculum(tiny_cfg(tmp_path, name="learnalign", method="learnalign", rounds=1, warmup_problems=8,
                                warmup_steps=2)).run().rounds[0]["cost"]
    assert learn["generated"]["warmup"]["completions"] == 2 * B * K  # the warm-up's own GRPO steps
    assert learn["forward_backward_tokens"]["warmup"] > 0 and learn["generated"]["candidates"]["completions"] == 32 * K
    assert learn["reused"]["completions"] == 0  # LearnAlign scores a warmed-up copy's rollouts: not the policy's
    cropi = Curriculum(tiny_cfg(tmp_path, name="cropi", method="cropi", rounds=2, offline_validation_rollouts=4)).run()
    first, second = (r["cost"] for r in cropi.rounds)
    assert first["generated"]["offline"]["completions"] == 64 * K + 8 * 4  # the whole pool and validation, once
    assert second["generated"]["offline"]["completions"] == 0
    assert first["generated"]["candidates"]["completions"] == 0 and first["reused"]["completions"] == 0
    assert first["forward_backward_tokens"]["scoring"] > 0


def test_scoring_inside_the_trainer_leaves_the_training_step_untouched(tmp_path, monkeypatch):
    """A batch step whose selection scored gradients trains exactly as one whose selection scored nothing, when
    both train on the same problems with the same rollouts: scoring leaves no gradient, mode or state behind."""
    import torch
    from gradalign.curriculum import batch as batch_mod
    monkeypatch.setattr(batch_mod, "fill_up", lambda selected, n, size: np.arange(size))  # same problems for both
    weights = {}
    for method in ("gradalign-z", "nonzero-variance"):
        Curriculum(tiny_cfg(tmp_path, name=method, method=method, schedule="batch", rounds=1)).run()
        from safetensors.torch import load_file
        weights[method] = load_file(str(tmp_path / method / "checkpoints/round-000/model.safetensors"))
    a, b = weights.values()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
