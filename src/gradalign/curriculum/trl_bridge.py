"""Everything that touches TRL: datasets, the reward adapter, the GRPO arguments, a sampler that plays an exact
schedule of problems, and `ScheduledGRPOTrainer`, which trains on exactly that schedule.

TRL has no data-selection API. Its `RepeatSampler` yields blocks of unique prompt indices, each index repeated
`num_generations` times and each block `num_iterations × steps_per_generation` times. `ScheduleSampler` keeps
that structure but plays blocks we chose, so TRL trains on exactly the selected problems.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import Sampler
from transformers import set_seed
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from ..config import SCHEDULE_OWNED, RunConfig, build_grpo_config, replay_obstacle
from ..data.io import ANSWER_COLUMN, ID_COLUMN, METADATA_COLUMN, problems_to_rows
from ..data.problem import Problem
from ..distributed import process_group, world_size
from ..policy.load import bf16_compute
from ..policy.rollouts import sampling_logps
from ..rewards import ProblemReward
from .ledger import Ledger

log = logging.getLogger(__name__)


def problems_dataset(problems: Sequence[Problem]) -> Dataset:
    """A TRL-ready dataset: `prompt` plus the columns our reward function reads."""
    return Dataset.from_list(problems_to_rows(problems))


def completion_text(completion) -> str:
    """TRL passes plain strings, or for chat prompts a list of messages; the reward reads the text."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return completion


class TRLReward:
    """Adapts a `ProblemReward` to TRL's reward-function signature.

    It is the same reward the selection rollouts use, so selection and training never disagree on what is
    correct. `seen` (optional list) records the problem id of every completion TRL scored: what TRL trained on.
    """

    def __init__(self, reward: ProblemReward, seen: list | None = None):
        self.reward = reward
        self.seen = seen
        self.__name__ = "gradalign_reward"  # TRL logs rewards under the function's name

    def __call__(self, prompts, completions, **columns) -> list[float]:
        answers = columns[ANSWER_COLUMN]
        metas = [{**json.loads(m or "{}"), "problem_id": pid}
                 for m, pid in zip(columns[METADATA_COLUMN], columns[ID_COLUMN])]
        if self.seen is not None:
            self.seen.extend(columns[ID_COLUMN])
        return self.reward.batch([completion_text(c) for c in completions], list(answers), metas)


class ScheduleSampler(Sampler):
    """Yields a fixed list of prompt blocks in RepeatSampler's layout (identical on every rank)."""

    def __init__(self, blocks: list[list[int]], mini_repeat_count: int, repeat_count: int):
        self.blocks, self.mini, self.repeat = blocks, mini_repeat_count, repeat_count

    def __iter__(self):
        for block in self.blocks:
            for _ in range(self.repeat):
                for index in block:
                    yield from [index] * self.mini

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks) * self.mini * self.repeat


def plan_blocks(n_items: int, block_size: int, n_blocks: int, rng: np.random.Generator) -> list[list[int]]:
    """`n_blocks` blocks of `block_size` indices from range(n_items): seeded passes through shuffled orders.

    Every item is used once per pass; a block straddles passes when `block_size` does not divide `n_items`,
    and repeats an item within a block only when the selection is smaller than a block.
    """
    if n_items < 1:
        raise ValueError("cannot train on an empty selection")
    stream: list[int] = []
    while len(stream) < block_size * n_blocks:
        stream.extend(rng.permutation(n_items).tolist())
    return [stream[i * block_size:(i + 1) * block_size] for i in range(n_blocks)]


class Replay:
    """Selection completions that a generation trains on instead of sampling its own.

    Keyed by prompt token ids, valid only for the generation at optimizer step `step` (the weights they were
    sampled with). A prompt takes them only when there are as many as the generation asks for: all or nothing per
    prompt, so a group never mixes replayed and fresh completions."""

    def __init__(self, groups: dict[tuple[int, ...], list[list[int]]], step: int = 0):
        self.groups, self.step = groups, step

    def take(self, prompt_ids: list[list[int]]) -> list[list[int] | None]:
        """A completion for each row, None where its prompt has too few (those rows must be generated)."""
        wanted: dict[tuple[int, ...], int] = {}
        for ids in prompt_ids:
            wanted[tuple(ids)] = wanted.get(tuple(ids), 0) + 1
        enough = {key for key, n in wanted.items() if len(self.groups.get(key, ())) >= n}
        return [self.groups[tuple(ids)].pop(0) if tuple(ids) in enough else None for ids in prompt_ids]


def reusable(selection, cfg: RunConfig, num_generations: int, use_vllm: bool, vllm_correction: bool) -> bool:
    """Whether training can take a `RoundSelection`'s rollouts: reuse on, the policy's own samples (`rollouts` is
    None for warm-up, feature or offline methods), at least `num_generations` per group, and no vLLM
    importance-sampling correction that needs their sampling log-probs (`replay_obstacle`)."""
    return (selection is not None and selection.rollouts is not None and cfg.reuse_rollouts
            and cfg.rollouts_per_problem >= num_generations and not replay_obstacle(use_vllm, vllm_correction))


def shared_replay(parts: list[dict[tuple[int, ...], list[list[int]]]], keys: list[tuple[int, ...]], share: slice,
                  step: int) -> Replay | None:
    """One process's `Replay` of a generation that several processes share: `parts`, every process's selection
    groups (its shard of the problems, keyed by prompt ids); `keys`, the prompt of every row of the generation in
    the batch's order; this process holds rows `share`. The i-th row of a prompt takes the prompt's i-th completion
    wherever that row lies, so the processes together train on each group exactly once. All or nothing for the
    whole generation (None unless every row has its completion): every process then generates its whole share or
    none does, as vLLM's and FSDP's generation are collective."""
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for part in parts:
        for key, completions in part.items():
            groups.setdefault(key, []).extend(completions)
    taken: dict[tuple[int, ...], int] = {}
    mine: dict[tuple[int, ...], list[list[int]]] = {}
    for row, key in enumerate(keys):
        i = taken[key] = taken.get(key, -1) + 1
        if i >= len(groups.get(key, ())):
            return None
        if share.start <= row < share.stop:
            mine.setdefault(key, []).append(groups[key][i])
    return Replay(mine, step=step)


class TrainerSampler:
    """Selection's sampler: the trainer's own generation (`GRPOTrainer._generate_single_turn`), so selection samples
    exactly as training does: vLLM colocate or server (after TRL's weight sync, collective over ranks), transformers'
    continuous batching, or the padded `generate` with the trainer's `generation_config`, and every generation
    setting TRL applies (temperature, top_p, top_k, min_p, repetition_penalty, generation_kwargs; prompts tokenized
    with the chat template and its chat_template_kwargs by `trainer._tokenize_prompts`).

    It calls TRL's method itself, not the trainer's override, so a selection never takes a `Replay` and is not
    counted as training. Sampling-time log-probs are vLLM's when it returns them; with `need_logps` the other paths
    get them from one forward (`sampling_logps`), else none."""

    def __init__(self, trainer: GRPOTrainer, k: int, need_logps: bool = False):
        self.trainer, self.k, self.need_logps = trainer, k, need_logps
        self.lockstep = process_group(trainer.accelerator.device)

    def __call__(self, prompt_ids: list[list[int]]):
        t = self.trainer
        training = t.model.training
        completions, logps = GRPOTrainer._generate_single_turn(t, prompt_ids, None, {}, self.k)
        t.model.train(training)  # TRL's continuous-batching path leaves the model in training mode
        completions = [list(c) for c in completions]
        if logps is None and self.need_logps:
            logps = sampling_logps(t.model, prompt_ids, completions, t._tokenizer.pad_token_id, t.temperature,
                                   t.top_p)
        return completions, logps


class ReplayingGRPOTrainer(GRPOTrainer):
    """A GRPOTrainer whose generation at optimizer step `replay.step` trains on `replay`'s completions where it has
    them (`Replay`) and samples only the other rows; what it generated and replayed is counted into `ledger`."""

    replay: Replay | None = None
    ledger: Ledger

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kw):
        completions: list = [None] * len(prompt_ids)
        if self.replay is not None and self.state.global_step == self.replay.step and images is None:
            completions = self.replay.take(prompt_ids)
        replayed = [c for c in completions if c is not None]
        self.ledger.reuse(len(replayed), sum(map(len, replayed)))
        missing = [i for i, c in enumerate(completions) if c is None]
        logprobs = None  # as TRL's padded path; a generation that mixes in replayed rows keeps none either
        if missing:
            fresh, fresh_logprobs = super()._generate_single_turn([prompt_ids[i] for i in missing], images,
                                                                  multimodal_fields, num_generations, **kw)
            self.ledger.generate("training", len(fresh), sum(map(len, fresh)))
            for i, c in zip(missing, fresh):
                completions[i] = c
            logprobs = fresh_logprobs if len(missing) == len(prompt_ids) else None
        return completions, logprobs


class ScheduledGRPOTrainer(ReplayingGRPOTrainer):
    """A GRPOTrainer whose training prompts follow `schedule` (blocks of dataset indices, one per generation).

    `replay` hands the first generation selection's own completions (`Replay`); `pick_batch(trainer)`, when given,
    chooses each generation's problems at the moment TRL generates (current weights) and returns their dataset
    indices and the `Replay` of their rollouts: the schedule's blocks are then placeholders of the right size.
    Everything generated, replayed and trained on is counted into `ledger`."""

    def __init__(self, *args, schedule: list[list[int]], replay: Replay | None = None, pick_batch=None,
                 ledger: Ledger | None = None, **kwargs):
        self.schedule, self.replay, self.pick_batch = schedule, replay, pick_batch
        self.ledger = ledger if ledger is not None else Ledger()
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None) -> Sampler:
        return ScheduleSampler(self.schedule, self.num_generations, self.num_iterations * self.args.steps_per_generation)

    def _generate_and_score_completions(self, inputs):
        if self.pick_batch is not None and self.model.training:
            indices, self.replay = self.pick_batch(self)
            inputs = [self.train_dataset[int(i)] for i in indices for _ in range(self.num_generations)]
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:  # every generation batch is trained on num_iterations times
            tokens = int(out["prompt_mask"].sum()) + int(out["completion_mask"].sum())
            self.ledger.pass_through("training", tokens * self.num_iterations)
        return out


def bf16_autocast(use_cpu: bool) -> bool:
    """TRL's `bf16` flag: autocast for GRPO steps on GPUs that support bf16 (`bf16_compute`), over fp32 weights."""
    return not use_cpu and bf16_compute(torch.device("cuda"))


# TRL fields `gradalign run` accepts (a `trl grpo` config has them) but does not read: weights load in fp32 for
# exact scoring, and the held-out set is `test`.
NOT_READ = ("model_revision", "dtype", "attn_implementation", "dataset_test_split", "ignore_bias_buffers")


def warn_unused_trl_fields(cfg: RunConfig) -> None:
    """One warning naming the TRL fields the config sets whose values gradalign run does not use."""
    owned = [name for name in SCHEDULE_OWNED if name in cfg.trl]
    unread = [name for name in NOT_READ if name in cfg.trl]
    if owned:
        log.warning("gradalign run's round schedule sets %s itself (one trainer per round, a constant learning rate "
                    "and AdamW carried across rounds, gradalign's loggers); the config's values are not used: set "
                    "rounds, steps_per_round and problems_per_step instead", ", ".join(owned))
    if unread:
        log.warning("gradalign run does not use %s (fp32 weights for exact scoring; the held-out set is `test`)",
                    ", ".join(unread))


def grpo_args(cfg: RunConfig, seed: int, max_steps: int, output_dir: str | None = None, use_cpu: bool = True
              ) -> GRPOConfig:
    """TRL arguments for one round: the config's GRPOConfig (`RunConfig.grpo_values`), for `max_steps` steps of B
    problems × num_generations completions, seeded by the round.

    With several processes each takes an equal slice of every step's completions (data parallel), so a step
    still trains on B problems whatever the number of processes.
    """
    return build_grpo_config({
        **cfg.grpo_values(),
        "output_dir": output_dir or tempfile.mkdtemp(prefix="gradalign-trl-"),
        "per_device_train_batch_size": cfg.problems_per_step * cfg.grpo.num_generations // world_size(),
        "max_steps": max_steps, "seed": seed, "use_cpu": use_cpu,
        "bf16": cfg.trl.get("bf16", bf16_autocast(use_cpu)),
    })


@contextlib.contextmanager
def round_trainer(model, tokenizer, problems: Sequence[Problem], steps: int, cfg: RunConfig, reward: ProblemReward,
                  optimizer: torch.optim.Optimizer, scheduler, seed: int, seen: list | None = None, **trainer_kw):
    """The `ScheduledGRPOTrainer` of one round over `problems` (its dataset), for `steps` GRPO steps with the given
    optimiser (its state carries across rounds), seeded by the round; `trainer_kw`: its replay, pick_batch and
    ledger. Built before the round selects, so that selection samples through it (`sampling_through`); its
    schedule is set by `train_round`. Its output directory is removed when the round ends."""
    use_cpu = next(model.parameters()).device.type == "cpu"
    args = grpo_args(cfg, seed=seed % 2**31, max_steps=steps, use_cpu=use_cpu)
    try:
        trainer = ScheduledGRPOTrainer(
            model=model, reward_funcs=[TRLReward(reward, seen)], args=args, train_dataset=problems_dataset(problems),
            processing_class=tokenizer, optimizers=(optimizer, scheduler), schedule=[], **trainer_kw,
        )
        trainer.remove_callback(PrinterCallback)  # our records keep TRL's logs; do not print a dict per step
        yield trainer
    finally:
        shutil.rmtree(args.output_dir, ignore_errors=True)


@contextlib.contextmanager
def scaled_learning_rate(optimizer: torch.optim.Optimizer, scale: Callable[[], float]):
    """Every optimiser step inside runs at its learning rate × `scale()` (read at the step), restored right after
    it, so that the scheduler and the next step see the base rate. AdamW's update is linear in the rate: a step
    scaled by s moves the weights s times as far (and its weight decay s times as much)."""
    base: list[float] = []

    def before(opt, args, kwargs):
        base[:] = [group["lr"] for group in opt.param_groups]
        for group in opt.param_groups:
            group["lr"] *= scale()

    def after(opt, args, kwargs):
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr
    handles = [optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def train_round(trainer: "ScheduledGRPOTrainer", schedule: list[list[int]]) -> list[dict]:
    """Train `trainer` over `schedule` (blocks of its dataset's indices); returns TRL's per-step logs (loss,
    reward, ...)."""
    trainer.schedule = schedule
    set_seed(trainer.args.seed)  # as at the trainer's construction: the round's selection sampled since
    trainer.train()
    return [row for row in trainer.state.log_history if "loss" in row or "reward" in row]


@contextlib.contextmanager
def sampling_through(selector, trainer: GRPOTrainer):
    """While the block runs, `selector` (a `RoundSelector`) samples with the training sampler: TRL's generation
    through `trainer` (`TrainerSampler`) and TRL's tokenization of the prompts, so that training can take the
    selection's groups by their prompt ids (`Replay`)."""
    sample_through(selector, trainer)
    try:
        yield
    finally:
        selector.sampler = selector.tokenize = None


def sample_through(selector, trainer: GRPOTrainer) -> None:
    selector.sampler = lambda k: TrainerSampler(trainer, k)
    selector.tokenize = lambda prompts: trainer._tokenize_prompts(prompts)[0]


def new_optimizer(model, cfg: RunConfig):
    """AdamW over the trainable parameters at the config's (constant) learning rate, betas, eps and weight decay,
    and its scheduler."""
    g = cfg.grpo
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=g.learning_rate,
                                  betas=(g.adam_beta1, g.adam_beta2), eps=g.adam_epsilon, weight_decay=g.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def grpo_steps(model, tokenizer, problems: Sequence[Problem], steps: int, cfg: RunConfig, reward: ProblemReward,
               optimizer, scheduler, seed: int, **trainer_kw) -> list[dict]:
    """`steps` GRPO steps of B problems drawn in seeded passes over `problems` (TRL, our schedule); `trainer_kw` as
    `round_trainer`'s."""
    with round_trainer(model, tokenizer, problems, steps, cfg, reward, optimizer, scheduler, seed,
                       **trainer_kw) as trainer:
        return train_on(trainer, range(len(problems)), steps, cfg, seed)


def train_on(trainer: "ScheduledGRPOTrainer", rows: Sequence[int], steps: int, cfg: RunConfig, seed: int
             ) -> list[dict]:
    """`steps` GRPO steps of B of the trainer's dataset `rows`, drawn in seeded passes over them."""
    blocks = plan_blocks(len(rows), cfg.problems_per_step, steps // cfg.grpo.num_iterations,
                         np.random.default_rng(seed))
    return train_round(trainer, [[int(rows[i]) for i in block] for block in blocks])
