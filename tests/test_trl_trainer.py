"""`GradAlignGRPOTrainer` driven as a TRL user drives `GRPOTrainer`: TRL's batching knobs, epochs, reward models,
chat prompts, async and keyword-reading reward functions, `None` rewards, streams, zero-variance validation sets.

What TRL trained on is recorded at TRL's own entry point for training-time generation
(`_generate_and_score_completions`), once per generation batch, with the optimizer step it was made at.
"""

import asyncio
import logging

import pytest
import torch
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForSequenceClassification
from trl import GRPOConfig, GRPOTrainer

from gradalign import GradAlignGRPOTrainer, RunConfig
from gradalign.curriculum.round import NoDirectionError
from gradalign.curriculum.trl_bridge import TrainerSampler
from gradalign.curriculum.trl_selection import TrainerArgumentError, combine_rewards
from gradalign.data.regimes import unreliable_rewards
from gradalign.policy.rollouts import reward_keys
from gradalign.policy.warmstart import warm_started_tiny

pytestmark = pytest.mark.slow

SELECTION = dict(chunk_size=16, selection_ratio=2, rollouts_per_problem=4, validation_rollouts=4, rollout_batch=8)


def exact_match(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


@pytest.fixture(scope="module")
def scenario():
    return unreliable_rewards(pool_size=64, validation_size=8, test_size=4, seed=0)


def rows(problems, chat: bool = False) -> Dataset:
    """Our problems as a TRL dataset; `row` lets a test tell which problem TRL trained on."""
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}] if chat else p.prompt,
                               "answer": p.answer, "row": i} for i, p in enumerate(problems)])


class Recording(GradAlignGRPOTrainer):
    """Records (optimizer step, dataset rows) of every generation batch TRL trains on, where TRL rewards it
    (selection rewards its rollouts with the model in eval mode)."""

    def _calculate_rewards(self, inputs, *args):
        if self.model.training:
            self.generations = getattr(self, "generations", []) + [(self.state.global_step, [x["row"] for x in inputs])]
        return super()._calculate_rewards(inputs, *args)


def grpo_args(tmp_path, **kw) -> GRPOConfig:
    base = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16, num_generations=4,
                max_completion_length=6, report_to=[], use_cpu=True, bf16=False, logging_steps=1, save_strategy="no")
    return GRPOConfig(**{**base, **kw})


def trainer(tmp_path, scenario, reward_funcs=exact_match, cls=Recording, selection=None, chat=False, model=None,
            reward_processing_classes=None, answer_key=None, **args):
    policy, tokenizer = model or warm_started_tiny()
    return cls(model=policy, processing_class=tokenizer, reward_funcs=reward_funcs, answer_key=answer_key,
               reward_processing_classes=reward_processing_classes,
               train_dataset=rows(scenario.pool, chat), args=grpo_args(tmp_path, **args),
               validation_dataset=rows(scenario.validation, chat),
               selection=RunConfig.of(**{**SELECTION, "steps_per_round": 2, **(selection or {})}))


def assert_trained_on_selections(t: Recording, steps_per_round: int) -> None:
    """Every generation TRL trained on holds only its round's selection, each prompt num_generations times."""
    for step, trained in t.generations:
        chosen = set(t.selection_history[step // steps_per_round]["selected"])
        assert set(trained) <= chosen, (step, trained, chosen)
        assert all(trained.count(i) % t.args.num_generations == 0 for i in set(trained))


# ── the round schedule under TRL's batching knobs ────────────────────────────────────────────────────────────
@pytest.mark.parametrize("knobs", [
    dict(gradient_accumulation_steps=2),
    dict(steps_per_generation=2),
    dict(generation_batch_size=32),
    dict(num_iterations=2),
    dict(gradient_accumulation_steps=2, steps_per_generation=1),
])
def test_a_round_is_steps_per_round_optimizer_steps_whatever_the_batching(tmp_path, scenario, knobs):
    t = trainer(tmp_path, scenario, selection={"steps_per_round": 4}, max_steps=8, **knobs)
    t.train()
    a = t.args
    assert t.state.global_step == 8
    assert [h["round"] for h in t.selection_history] == [0, 1]  # one selection per round: nothing replayed
    assert not set(t.chunks[0]) & set(t.chunks[1])
    for h, chunk in zip(t.selection_history, t.chunks):
        assert set(h["selected"]) <= set(chunk.tolist())
    # one generation serves steps_per_generation × num_iterations micro-steps of gradient_accumulation_steps each
    assert len(t.generations) == 8 * a.gradient_accumulation_steps // (a.steps_per_generation * a.num_iterations)
    assert all(len(g) == a.generation_batch_size for _, g in t.generations)  # one process: the whole batch
    assert_trained_on_selections(t, 4)
    for h in t.selection_history:  # each round's selection cost, in its record
        sel = t.selection
        assert h["cost"]["generated"]["candidates"]["completions"] == len(t.chunks[0]) * sel.rollouts_per_problem
        measured = len(t.selector.validation) * sel.validation_rollouts if h["scored"] else 0  # none: not needed
        assert h["cost"]["generated"]["validation"]["completions"] == measured


def test_a_round_that_is_not_whole_generations_is_refused_naming_the_arguments(tmp_path, scenario):
    with pytest.raises(TrainerArgumentError) as e:
        trainer(tmp_path, scenario, selection={"steps_per_round": 2}, steps_per_generation=4)
    msg = str(e.value)
    assert "selection=RunConfig(steps_per_round=2)" in msg and "args.steps_per_generation=4" in msg
    assert "multiple of 4" in msg and "\n" not in msg


def test_epoch_based_training_makes_trls_own_step_count(tmp_path, scenario):
    """`max_steps=-1`: as many steps as plain TRL makes over the same epochs; the rounds continue through epochs."""
    model, tokenizer = warm_started_tiny()
    small = unreliable_rewards(pool_size=32, validation_size=8, test_size=4, seed=1)
    args = dict(max_steps=-1, num_train_epochs=2)
    plain = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=exact_match,
                        train_dataset=rows(small.pool), args=grpo_args(tmp_path, **args))
    per_epoch = len(plain.get_train_dataloader()) // plain.args.gradient_accumulation_steps
    t = trainer(tmp_path, small, model=(model, tokenizer), selection={"steps_per_round": 4}, **args)
    t.train()
    assert t.state.global_step == 2 * per_epoch == 16
    assert [h["round"] for h in t.selection_history] == [0, 1, 2, 3]  # epoch 2 goes on to new rounds
    assert_trained_on_selections(t, 4)


# ── rewards: TRL's own code path ─────────────────────────────────────────────────────────────────────────────
def tiny_reward_model(tokenizer) -> Qwen2ForSequenceClassification:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForSequenceClassification(config).eval()


def test_reward_models_and_weights_are_applied_as_trl_applies_them(tmp_path, scenario):
    policy, tokenizer = warm_started_tiny()
    rm = tiny_reward_model(tokenizer)
    t = trainer(tmp_path, scenario, reward_funcs=[rm, exact_match], model=(policy, tokenizer),
                reward_processing_classes=[tokenizer, None], reward_weights=[0.5, 1.0])
    t.train()
    assert t.state.global_step == 4 and len(t.selection_history) == 2
    # Independently: the reward model on each unpadded prompt + completion, weighted, plus exact match.
    problems = t.pool[:3]
    texts = ["1", "12", " 7"]
    got = t.selector.reward.score_completions(problems, texts, [tokenizer(x)["input_ids"] for x in texts])
    for p, text, value in zip(problems, texts, got):
        ids = tokenizer(p.prompt + text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            score = rm(**ids).logits[0, 0].item()
        answer = t.train_dataset[int(p.id.split(":")[1])]["answer"]
        # fp32: padded (TRL) and unpadded (here) forwards differ by rounding only, ~1e-6 on logits of size ~1
        assert value == pytest.approx(0.5 * score + float(text.strip() == answer), abs=1e-4)


def test_chat_prompts_reach_reward_functions_as_message_lists(tmp_path, scenario):
    seen = []

    def chat_match(prompts, completions, answer, **kwargs):
        for prompt, c in zip(prompts, completions):
            if not (isinstance(prompt, list) and isinstance(c, list) and c[0]["role"] == "assistant"):
                raise TypeError(f"not TRL's chat format: {prompt!r} -> {c!r}")
        seen.append(len(completions))
        return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]

    t = trainer(tmp_path, scenario, reward_funcs=chat_match, chat=True)
    t.train()
    assert t.state.global_step == 4 and len(seen) >= 4 + 2  # training generations and each round's candidates
    assert any(h["zero_variance"] < 16 for h in t.selection_history)  # rewards varied: the contents were read


def test_an_answer_key_lets_the_consistency_check_read_answers(tmp_path, scenario):
    """Without `answer_key` the check compares identical completions only; with it, the user's key of each text."""
    texts = [" 12", "12 ", "11"]
    for key, expected in [(None, [None] * 3), (str.strip, ["12", "12", "11"])]:
        t = trainer(tmp_path, scenario, answer_key=key)
        assert reward_keys(t.selector.reward, t.pool[:3], texts) == expected


def test_async_reward_functions_are_awaited(tmp_path, scenario):
    async def slow_match(prompts, completions, answer, **kwargs):
        await asyncio.sleep(0)
        return exact_match(prompts, completions, answer)

    t = trainer(tmp_path, scenario, reward_funcs=slow_match)
    t.train()
    problems, texts = t.pool[:4], [" 1", "2", "", "33"]
    got = t.selector.reward.score_completions(problems, texts, [[5]] * 4)
    answers = [t.train_dataset[int(p.id.split(":")[1])]["answer"] for p in problems]
    assert got == exact_match(None, texts, answers)


def test_reward_functions_get_every_keyword_trl_passes_and_none_is_left_out(tmp_path, scenario):
    calls = []

    def picky(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, answer, row, **kwargs):
        assert len(completion_ids) == len(completions) and all(isinstance(i, int) for i in completion_ids[0])
        assert trainer_state.global_step >= 0
        log_metric("picky_calls", 1.0)
        log_extra("picky_row", list(row))
        calls.append(len(completions))
        # no reward for odd rows: TRL treats those completions as unscorable
        return [None if r % 2 else float(c.strip() == a) for c, a, r in zip(completions, answer, row)]

    t = trainer(tmp_path, scenario, reward_funcs=picky)
    t.train()
    assert t.state.global_step == 4 and len(calls) >= 4
    assert any("picky_calls" in row for row in t.state.log_history)
    for h in t.selection_history:  # odd rows are never scored, so they are zero-variance and never selected
        assert all(int(t.pool[i].id.split(":")[1]) % 2 == 0 for i in h["selected"]) or h["fallback"]


def test_combine_rewards_matches_trls_aggregations():
    per_func = torch.tensor([[1.0, float("nan")], [0.0, 2.0], [float("nan"), float("nan")], [1.0, 4.0]])
    weights = torch.tensor([0.5, 2.0])
    total = combine_rewards(per_func, weights, "sum_then_normalize", ["a", "a", "b", "b"])
    assert total[:2].tolist() == [0.5, 4.0] and total[2].isnan() and total[3].item() == 8.5
    # normalize_then_sum: each function normalised within a group first (one group of all four here)
    grouped = combine_rewards(per_func, weights, "normalize_then_sum", ["g"] * 4)
    col0 = torch.tensor([1.0, 0.0, 1.0])
    z0 = (col0 - col0.mean()) / (col0.std() + 1e-4)
    col1 = torch.tensor([2.0, 4.0])
    z1 = (col1 - col1.mean()) / (col1.std() + 1e-4)
    assert grouped[0].item() == pytest.approx(0.5 * z0[0].item(), abs=1e-5)
    assert grouped[1].item() == pytest.approx(0.5 * z0[1].item() + 2.0 * z1[0].item(), abs=1e-5)
    assert grouped[2].isnan()


# ── inputs selection cannot serve, and rounds without a direction ────────────────────────────────────────────
def test_streamed_datasets_are_refused_at_construction(tmp_path, scenario):
    policy, tokenizer = warm_started_tiny()
    with pytest.raises(TrainerArgumentError, match="train_dataset is an IterableDataset"):
        GradAlignGRPOTrainer(model=policy, processing_class=tokenizer, reward_funcs=exact_match,
                             train_dataset=rows(scenario.pool).to_iterable_dataset(), args=grpo_args(tmp_path),
                             validation_dataset=rows(scenario.validation), selection=RunConfig.of(**SELECTION))


def test_score_parameters_naming_nothing_is_refused_at_construction(tmp_path, scenario):
    with pytest.raises(TrainerArgumentError,
                       match=r"score_parameters=\.\.\.\): \['decoder\.\*'\] matched no trainable"):
        trainer(tmp_path, scenario, selection={"score_parameters": ["decoder.*"]})


def test_sampling_errors_name_the_grpo_argument(tmp_path, scenario):
    with pytest.raises(TrainerArgumentError, match=r"args\.top_p must be in \(0, 1\]"):
        trainer(tmp_path, scenario, top_p=0.0)


def test_a_zero_variance_validation_set_does_not_stop_the_run(tmp_path, scenario, caplog):
    constant = lambda completions, **kwargs: [1.0] * len(completions)  # noqa: E731
    with caplog.at_level(logging.WARNING):
        t = trainer(tmp_path, scenario, reward_funcs=constant)
        t.train()
    assert t.state.global_step == 4
    assert [h["fallback"] for h in t.selection_history] == ["random", "random"] and t.no_direction_rounds == 2
    assert any("selecting uniformly" in r.message for r in caplog.records)
    assert max(row.get("selection/no_direction_rounds", 0) for row in t.state.log_history) == 2


def test_asking_for_an_error_on_no_direction_says_how_to_continue(tmp_path, scenario):
    constant = lambda completions, **kwargs: [1.0] * len(completions)  # noqa: E731
    t = trainer(tmp_path, scenario, reward_funcs=constant, selection={"no_direction": "error"})
    with pytest.raises(NoDirectionError, match=r"selection=RunConfig\(no_direction='auto'\)"):
        t.train()


# ── TRL's own training features keep working with selection on ──────────────────────────────────────────────
@pytest.mark.parametrize("knobs", [
    dict(loss_type="grpo"), dict(loss_type="dr_grpo"), dict(loss_type="bnpo"), dict(beta=0.1),
    dict(scale_rewards="batch"), dict(mask_truncated_completions=True), dict(top_entropy_quantile=0.5),
])
def test_trl_loss_and_reward_options_train_with_selection(tmp_path, scenario, knobs):
    t = trainer(tmp_path, scenario, **knobs)
    t.train()
    assert t.state.global_step == 4 and len(t.selection_history) == 2
    assert_trained_on_selections(t, 2)


def test_evaluation_runs_beside_selection(tmp_path, scenario):
    policy, tokenizer = warm_started_tiny()
    t = Recording(model=policy, processing_class=tokenizer, reward_funcs=exact_match,
                  train_dataset=rows(scenario.pool), eval_dataset=rows(scenario.test),
                  args=grpo_args(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=16),
                  validation_dataset=rows(scenario.validation), selection=RunConfig.of(**SELECTION, steps_per_round=2))
    t.train()
    assert any("eval_loss" in row or "eval_reward" in row for row in t.state.log_history)
    assert_trained_on_selections(t, 2)


def test_a_mixture_of_experts_policy_is_selected_for_and_trained(tmp_path, scenario, caplog):
    """Qwen3-MoE's fused experts take the one-pass scorer's exact fallback (tests/test_moe_scoring.py)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    _, tokenizer = warm_started_tiny()
    config = Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    policy = Qwen3MoeForCausalLM(config)
    even_length = lambda completions, **kwargs: [float(len(c) % 2 == 0) for c in completions]  # noqa: E731
    with caplog.at_level(logging.WARNING):
        t = trainer(tmp_path, scenario, reward_funcs=even_length, model=(policy, tokenizer))
        t.train()
    assert t.state.global_step == 4 and [h["fallback"] for h in t.selection_history] == [None, None]
    assert any("naive per-problem backward" in r.message for r in caplog.records)
    assert_trained_on_selections(t, 2)


# ── selection samples through TRL's own generation ───────────────────────────────────────────────────────────
TRL_SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "no_repeat_ngram_size")


@pytest.fixture
def generate_calls(monkeypatch):
    """Every call of TRL's `_generate_single_turn` (training's and selection's): optimizer step, whether the model
    was training (selection samples in eval mode), rows asked for, num_generations, the trainer's settings."""
    calls, original = [], GRPOTrainer._generate_single_turn

    def recorded(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
        config = self.generation_config.to_dict() if self.generation_config is not None else {}
        calls.append(dict(step=self.state.global_step, training=self.model.training, rows=len(prompt_ids),
                          k=num_generations, settings={name: config.get(name) for name in TRL_SETTINGS}))
        return original(self, prompt_ids, images, multimodal_fields, num_generations, **kw)

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", recorded)
    return calls


def assert_one_sampler(t: Recording, calls: list[dict]) -> None:
    """Selection and training sampled through the same TRL path with the same settings; each round's first
    generation was the selection's own groups (no training call at that step), the round record says so."""
    selection = [c for c in calls if not c["training"]]
    training = [c for c in calls if c["training"]]
    assert selection and training
    assert all(c["settings"] == training[0]["settings"] for c in calls)
    per_round = t.selection.steps_per_round
    assert sorted({c["step"] for c in selection}) == [r * per_round for r in range(len(t.selection_history))]
    assert all(c["step"] % per_round for c in training)  # no generate call for a round's first generation batch
    for h in t.selection_history:
        assert h["reused"] == {"groups": t.layout.problems_per_block,
                               "completions": t.layout.problems_per_block * t.args.num_generations}
    assert_trained_on_selections(t, per_round)


@pytest.mark.parametrize("knobs", [
    dict(top_k=5, repetition_penalty=1.2, generation_kwargs={"no_repeat_ngram_size": 3}),  # the padded path
    # a small paged cache: sized from free memory by default, which on a CPU takes minutes to allocate
    dict(use_transformers_continuous_batching=True, top_k=5,
         transformers_continuous_batching_config={"num_blocks": 16, "page_size": 16, "max_batch_tokens": 256}),
])
def test_selection_samples_through_trls_generation_with_trainings_settings(tmp_path, scenario, generate_calls, knobs):
    t = trainer(tmp_path, scenario, **knobs)
    t.train()
    assert t.state.global_step == 4
    assert_one_sampler(t, generate_calls)
    assert generate_calls[0]["settings"]["top_k"] == 5
    # log-probs these paths do not return come from one forward when asked for (at the trainer's temperature)
    ids = [[1, 5, 6]] * 4
    completions, logps = TrainerSampler(t, 4, need_logps=True)(ids)
    assert [len(lp) for lp in logps] == [len(c) for c in completions] and all(x <= 0 for lp in logps for x in lp)


class FakeVLLM:
    """Stands in for TRL's `VLLMGeneration` at its call site in `_generate_single_turn` (vLLM is not installed
    here): records each weight sync and each `generate` call's arguments, and answers with the policy's own
    padded samples and made-up top-1 log-probs of -0.5."""

    def __init__(self, trainer):
        self.trainer, self.syncs, self.calls = trainer, [], []

    def sync_weights(self):
        self.syncs.append(self.trainer.state.global_step)

    def generate(self, prompts, images, num_generations, profiler=None):
        t = self.trainer
        self.calls.append(dict(step=t.state.global_step, training=t.model.training, rows=len(prompts),
                               images=images, k=num_generations, prompts_are_ids=isinstance(prompts[0][0], int)))
        t.use_vllm = False  # sample with TRL's padded path for the answer
        try:
            completions, _ = GRPOTrainer._generate_single_turn(t, prompts, None, {}, num_generations)
        finally:
            t.use_vllm = True
        return prompts, completions, [[[-0.5]] * len(c) for c in completions], None


def test_selection_calls_trls_vllm_path_as_training_does(tmp_path, scenario):
    t = trainer(tmp_path, scenario, vllm_importance_sampling_correction=False)
    t.use_vllm, t._last_loaded_step, t.vllm_generation = True, -1, FakeVLLM(t)
    t.train()
    fake = t.vllm_generation
    selection = [c for c in fake.calls if not c["training"]]
    training = [c for c in fake.calls if c["training"]]
    assert selection and training
    # the same arguments: token-id prompts, no images, num_generations (k_r = G here) completions per prompt
    assert {(c["images"], c["k"], c["prompts_are_ids"]) for c in fake.calls} == {(None, 4, True)}
    assert all(c["rows"] % 4 == 0 for c in fake.calls)  # whole groups: server mode takes every k-th prompt
    # weights synced once per optimizer step, before the step's first generation (a round's: its selection)
    assert fake.syncs == sorted(set(fake.syncs)) == sorted({c["step"] for c in fake.calls})
    assert all(c["step"] % 2 for c in training)  # round-first generations: the selection's own groups
    assert [h["reused"]["groups"] for h in t.selection_history] == [4, 4]
    # vLLM's sampling log-probs are kept with the selection rollouts
    rollouts = t.round_selection.rollouts
    assert torch.all(rollouts.sample_logps[rollouts.completion_mask.bool()] == -0.5)


def test_sampling_logps_from_one_forward_equal_the_samplers_own(scenario):
    """TRL's padded and continuous-batching paths return no log-probs; one forward gives those of the tempered,
    top-p-truncated distribution the tokens were drawn from. fp32, a cached incremental decode vs one full
    forward: agreement to 1e-4 (the sums differ in order only; a wrong temperature or nucleus is off by > 0.1)."""
    from gradalign.policy.rollouts import PaddedSampler, SamplingConfig, sampling_logps, tokenize_prompts
    model, tokenizer = warm_started_tiny()
    model.eval()
    ids = [row for row in tokenize_prompts(tokenizer, [p.prompt for p in scenario.pool[:8]]) for _ in range(4)]
    torch.manual_seed(0)
    completions, logps = PaddedSampler(model, tokenizer, SamplingConfig(temperature=0.7, top_p=0.8,
                                                                        max_new_tokens=6))(ids)
    again = sampling_logps(model, ids, completions, tokenizer.pad_token_id, temperature=0.7, top_p=0.8)
    flat = lambda rows: torch.tensor([x for row in rows for x in row])  # noqa: E731
    torch.testing.assert_close(flat(again), flat(logps), atol=1e-4, rtol=0)
    assert (flat(logps) < 0).any()  # real log-probs, not a nucleus of one token


def test_a_missing_train_dataset_gets_trls_own_message(tmp_path, scenario):
    model, tokenizer = warm_started_tiny()
    with pytest.raises(ValueError, match="`train_dataset` is required"):
        GradAlignGRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=exact_match,
                             args=grpo_args(tmp_path), validation_dataset=rows(scenario.validation))
