"""GradAlign inside an existing TRL script: `GradAlignGRPOTrainer` is a drop-in `GRPOTrainer`.

Training is TRL's own: every round is `selection.steps_per_round` optimizer steps of an unchanged `GRPOTrainer`.
What changes is which prompts its sampler yields. At the start of each round the sampler takes the next chunk
of the training dataset, scores it with the current policy (the same `RoundSelector` as `gradalign run`) and
yields the selected problems in TRL's own sampler layout (`RepeatSampler`'s blocks).

Selection rewards its rollouts through the trainer's own `_calculate_rewards`: the reward functions and reward
models, their processing classes, async functions, reward weights, the conversational completion format and
every keyword TRL passes (`trainer_state`, `log_extra`, `log_metric`, `completion_ids`, the dataset columns).
`None` rewards are left out of a group's mean, as in TRL. So a reward that works in TRL works in selection.

Selection samples through the trainer's own generation (`trl_bridge.TrainerSampler`: vLLM, continuous batching or
the padded path, with every generation setting of `args`), and is made when TRL generates the round's first batch,
at exactly the weights that batch is sampled with: accelerate's data loader reads one batch ahead, so the sampler
yields placeholders and `round_inputs` puts the round's problems in when TRL generates. The selected problems'
selection groups are then trained on in that first generation instead of being sampled again (`Replay`; with
several processes, gathered to every process, each training on its own rows: `shared_replay`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from torch.utils.data import Sampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer
from trl.chat_template_utils import parse_response
from trl.data_utils import is_conversational
from trl.trainer import grpo_trainer as trl_grpo
from trl.trainer.utils import nanstd

from .. import fileio
from ..config import ConfigError, RunConfig
from ..data.problem import Problem
from ..data.regimes import Scenario
from ..distributed import process_group
from ..selection import get_method
from ..selection.diagnostics import selection_diagnostics
from .setup import check_blocks, check_scope, chunk_order, round_seed
from .round import NoDirectionError, RoundSelector
from .ledger import Ledger
from .loggers import flatten_scalars
from .trl_bridge import Replay, ReplayingGRPOTrainer, plan_blocks, reusable, sample_through, shared_replay

log = logging.getLogger(__name__)

HISTORY_FILE = "selection_history.jsonl"  # in output_dir, and in every checkpoint (what resuming replays)
# TRL's fields selection reads, taken from the trainer's GRPO arguments, so that selection samples as training does.
FROM_ARGS = ("temperature", "top_p", "max_completion_length", "num_generations", "num_iterations")


class TrainerArgumentError(ValueError):
    """A bad argument to `GradAlignGRPOTrainer`: one line naming it as the user wrote it."""

    def __init__(self, detail: str):
        super().__init__(f"GradAlignGRPOTrainer: {detail}")


# ── Rewards: TRL's own code path ─────────────────────────────────────────────────────────────────────────────
@contextlib.contextmanager
def rewards_for_selection(trainer: GRPOTrainer):
    """Run TRL's `_calculate_rewards` for selection rollouts.

    Each process rewards its own share of a round's rollouts (the shares differ in size), so TRL's gather of
    the training batch across processes is skipped here; and what reward functions log through `log_extra` and
    `log_metric` stays out of the next training step's logs (its completions table would no longer line up)."""
    pending = trainer._pending_extra_logs, trainer._pending_metrics
    trainer._pending_extra_logs, trainer._pending_metrics = defaultdict(list), defaultdict(list)
    gather = trl_grpo.gather
    trl_grpo.gather = lambda tensor: tensor
    try:
        yield
    finally:
        trl_grpo.gather = gather
        trainer._pending_extra_logs, trainer._pending_metrics = pending


def trl_completions(trainer: GRPOTrainer, prompts: list, texts: list[str], completion_ids: list[list[int]]) -> list:
    """The completions as TRL's `_generate` hands them to reward functions: text, or for chat prompts a list
    holding the assistant message (parsed by the tokenizer's response template when it has one)."""
    if not is_conversational({"prompt": prompts[0]}):
        return texts
    tokenizer = trainer._tokenizer
    if getattr(tokenizer, "response_template", None) is not None or getattr(tokenizer, "response_schema", None):
        prefixes = trainer._tokenize_prompts(prompts)[0]
        return [[parse_response(tokenizer, ids, prefix=prefix, tools=trainer.tools or None)]
                for ids, prefix in zip(completion_ids, prefixes)]
    return [[{"role": "assistant", "content": text}] for text in texts]


def combine_rewards(per_func: torch.Tensor, weights: torch.Tensor, aggregation: str, groups: list[str]
                    ) -> torch.Tensor:
    """One reward per completion from [N, F] per-function rewards, as TRL combines them (NaN: no function scored
    the completion). `normalize_then_sum` normalises each function within a problem's group first; TRL's later
    batch-wide normalisation is affine and leaves the group's advantages' directions as they are."""
    per_func = per_func.float().cpu()
    unscorable = per_func.isnan().all(dim=1)
    if aggregation == "normalize_then_sum":
        index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        rows = torch.tensor([index[g] for g in groups])
        normed = torch.empty_like(per_func)
        for i in range(len(index)):
            part = per_func[rows == i]
            std = nanstd(part, dim=0, keepdim=True) if len(part) > 1 else torch.zeros_like(part[:1])
            normed[rows == i] = (part - part.nanmean(0, keepdim=True)) / (std + 1e-4)
        per_func = normed
    total = (per_func * weights.float().cpu().unsqueeze(0)).nansum(dim=1)
    total[unscorable] = float("nan")
    return total


class TrainerReward:
    """Rewards selection rollouts exactly as the trainer's training step does (its `_calculate_rewards`).

    Each problem id names the dataset and row its columns come from (`train:17`, `validation:3`)."""

    def __init__(self, trainer: GRPOTrainer, datasets: dict[str, Dataset], answer_key=None):
        self.trainer, self.datasets, self.answer_key = trainer, datasets, answer_key

    def row(self, problem_id: str) -> dict[str, Any]:
        name, index = problem_id.rsplit(":", 1)
        return dict(self.datasets[name][int(index)])

    def answer_keys(self, texts: list[str], answers: list[str], metadatas: list) -> list[str | None]:
        """The user's `answer_key` of each decoded completion (all None without one: the consistency check then
        compares identical completions only)."""
        if self.answer_key is None:
            return [None] * len(texts)
        return [None if key is None else str(key) for key in map(self.answer_key, texts)]

    def score_completions(self, problems: list[Problem], texts: list[str], completion_ids: list[list[int]]
                          ) -> list[float]:
        t = self.trainer
        inputs = [self.row(p.id) for p in problems]
        prompts = [row["prompt"] for row in inputs]
        completions = trl_completions(t, prompts, texts, completion_ids)
        with rewards_for_selection(t):
            per_func = t._calculate_rewards(inputs, prompts, completions, completion_ids)
        return combine_rewards(per_func, t.reward_weights, t.multi_objective_aggregation,
                               [p.id for p in problems]).tolist()


def dataset_problems(dataset: Dataset, name: str) -> list[Problem]:
    """Problems whose ids point back at dataset rows (the reward reads the row, so no answer column is needed)."""
    return [Problem(id=f"{name}:{i}", prompt=row["prompt"], answer="", source=name) for i, row in enumerate(dataset)]


# ── The round schedule in TRL's sampler layout ───────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class RoundLayout:
    """How `steps_per_round` optimizer steps map onto TRL's sampler.

    TRL's dataloader yields one generation batch per micro-step (`gradient_accumulation_steps` micro-steps per
    optimizer step); one generation of `generation_batch_size / num_generations` prompts serves
    `steps_per_generation × num_iterations` micro-steps, so its block of prompts is repeated that many times."""

    problems_per_block: int
    num_generations: int
    repeat: int  # micro-steps (dataloader batches) one generation serves
    blocks_per_round: int

    @property
    def indices_per_round(self) -> int:
        return self.blocks_per_round * self.repeat * self.problems_per_block * self.num_generations


def round_layout(args: GRPOConfig, steps_per_round: int) -> RoundLayout:
    """The layout of a round, or a one-line error when a round is not a whole number of generations."""
    repeat = args.steps_per_generation * args.num_iterations
    micro_steps = steps_per_round * args.gradient_accumulation_steps
    if micro_steps % repeat:
        unit = repeat // math.gcd(repeat, args.gradient_accumulation_steps)
        nearest = unit * max(1, round(steps_per_round / unit))
        raise TrainerArgumentError(
            f"selection=RunConfig(steps_per_round={steps_per_round}) is not a whole number of TRL generations: with "
            f"args.gradient_accumulation_steps={args.gradient_accumulation_steps}, "
            f"args.steps_per_generation={args.steps_per_generation} and args.num_iterations={args.num_iterations} "
            f"a round must be a multiple of {unit} optimizer steps (pass steps_per_round={nearest})")
    return RoundLayout(args.generation_batch_size // args.num_generations, args.num_generations, repeat,
                       micro_steps // repeat)


def rounds_per_epoch(args: GRPOConfig, layout: RoundLayout, steps_per_round: int, pool_size: int) -> int:
    """Rounds in one pass of the Trainer's epoch loop.

    With `max_steps > 0` one pass holds every round TRL's step count asks for. With epochs (`max_steps = -1`), an
    epoch is as many optimizer steps as plain TRL makes in one epoch over the whole training set (its sampler
    drops an incomplete last block), rounded up to whole rounds: the same training budget, spent on selections."""
    if args.max_steps > 0:
        return -(-args.max_steps // steps_per_round)
    batches = (pool_size // layout.problems_per_block) * layout.repeat
    steps = -(-batches // args.gradient_accumulation_steps)
    return max(1, -(-steps // steps_per_round))


class RoundSampler(Sampler):
    """An epoch's worth of placeholder indices in TRL's sampler layout (`indices_per_round` per round).

    The data loader reads them a batch ahead of training; the rows TRL trains on are put in when it generates
    (`GradAlignGRPOTrainer.round_inputs`), so a round's selection sees every step of the round before it."""

    def __init__(self, trainer: "GradAlignGRPOTrainer"):
        self.layout = trainer.layout
        self.rounds = rounds_per_epoch(trainer.args, self.layout, trainer.selection.steps_per_round,
                                       len(trainer.pool))

    def __iter__(self):
        return iter([0] * len(self))

    def __len__(self) -> int:
        return self.rounds * self.layout.indices_per_round


# ── The trainer ──────────────────────────────────────────────────────────────────────────────────────────────
def _bound_arguments(args: tuple, kw: dict) -> dict:
    """GRPOTrainer's arguments by name, however they were passed."""
    signature = inspect.signature(GRPOTrainer.__init__)
    return dict(signature.bind(None, *args, **kw).arguments)


def selection_config(base: RunConfig | None, args: GRPOConfig) -> RunConfig:
    """The selection knobs, with the sampling settings taken from the GRPO arguments; errors name the argument
    the user passed (`selection=RunConfig(...)` or `args.temperature`)."""
    base = base or RunConfig()
    if not isinstance(base, RunConfig):
        raise TrainerArgumentError(f"selection must be a gradalign RunConfig (got {type(base).__name__})")
    if base.trl:  # the trainer's args are TRL's configuration: one place for each of its fields
        name = next(iter(base.trl))
        raise TrainerArgumentError(f"selection=RunConfig(...) sets TRL's '{name}'; set it on args (GRPOConfig) "
                                   f"instead: selection samples with the trainer's own settings")
    ours = {k: v for k, v in base.to_dict().items() if k in RunConfig.__dataclass_fields__}
    try:
        return RunConfig(**ours, trl={name: getattr(args, name) for name in FROM_ARGS})
    except ConfigError as e:
        where = f"args.{e.key}" if e.key in FROM_ARGS else f"selection=RunConfig({e.key}=...)"
        raise TrainerArgumentError(f"{where} {e.detail}") from None


def check_trainer_inputs(bound: dict, selection: RunConfig) -> None:
    """Refuse, before TRL's set-up runs, what selection cannot serve, saying what to pass instead."""
    train = bound.get("train_dataset")
    if isinstance(train, IterableDataset):
        raise TrainerArgumentError("train_dataset is an IterableDataset (streamed); selection picks problems out "
                                   "of chunks of the pool, so pass a map-style datasets.Dataset (load it without "
                                   "streaming=True, or build one with Dataset.from_generator)")
    for name in ("tools", "rollout_func", "environment_factory"):  # `train_dataset=None`: TRL's own error
        if bound.get(name):
            raise TrainerArgumentError(f"{name}= is not supported: selection samples single-turn completions "
                                       f"(TRL's _generate_single_turn), so it would score other rollouts than TRL "
                                       f"trains on")
    unsupported = {"warmup", "offline"} & get_method(selection.method).needs
    if unsupported:  # a warm-up would nest a second GRPO trainer; offline stores belong to `gradalign run`
        raise TrainerArgumentError(f"cannot run method '{selection.method}' (it needs "
                                   f"{', '.join(sorted(unsupported))}); use `gradalign run` or `gradalign select`")


class GradAlignGRPOTrainer(ReplayingGRPOTrainer):
    """A `GRPOTrainer` that trains each round on the problems GradAlign (or any registered method) selects.

    Args (in addition to GRPOTrainer's):
        validation_dataset: trusted validation problems, same columns as `train_dataset`.
        selection: a `RunConfig` for the selection knobs (method, chunk_size, selection_ratio,
            rollouts_per_problem, validation_rollouts, steps_per_round, no_direction, ...). TRL's fields selection
            reads (`FROM_ARGS`: temperature, top_p, max_completion_length, ...) come from `args`, so selection
            samples like training.
        answer_key: optional, decoded completion text -> what your reward functions read of it (e.g. the parsed
            final answer), such that two completions of one prompt with the same key always get the same total
            reward. The default's consistency check then treats a group that rewarded one answer two ways as noise
            (without it: only identical completions). A key that misses something the rewards read (a format
            bonus, a length penalty) would flag clean groups: leave it out then.

    A round is `selection.steps_per_round` optimizer steps whatever `gradient_accumulation_steps`,
    `steps_per_generation`, `generation_batch_size` and `num_iterations` are. Epoch-based training
    (`max_steps=-1`) makes as many optimizer steps as plain TRL would. When no validation group has reward variance
    (`no_direction: auto`, the default here), a round reuses the previous round's direction, or selects uniformly
    when there is none yet, with a warning; `selection/no_direction_rounds` in the logs counts those rounds.
    """

    def __init__(self, *args, validation_dataset: Dataset | None = None, selection: RunConfig | None = None,
                 answer_key=None, **kw):
        self.ledger = Ledger()  # this round's training generation and reuse (`ReplayingGRPOTrainer`)
        bound = _bound_arguments(args, kw)
        grpo_args = bound.get("args")
        if grpo_args is None:  # TRL's default arguments, built as GRPOTrainer builds them
            grpo_args = bound["args"] = GRPOConfig(f"{str(bound['model']).split('/')[-1]}-GRPO")
        self.selection = selection_config(selection, grpo_args)
        check_trainer_inputs(bound, self.selection)
        if isinstance(validation_dataset, IterableDataset):
            raise TrainerArgumentError("validation_dataset is an IterableDataset; pass a map-style datasets.Dataset")
        self.layout = round_layout(grpo_args, self.selection.steps_per_round)
        bound.pop("self", None)
        super().__init__(**bound)
        try:
            check_scope(self.selection, self.model)  # the model as TRL holds it (LoRA-wrapped with peft_config)
        except ConfigError as e:
            raise TrainerArgumentError(f"selection=RunConfig({e.key}=...): {e.detail}") from None
        self.pool = dataset_problems(self.train_dataset, "train")
        validation = dataset_problems(validation_dataset, "validation") if validation_dataset is not None else []
        reward = TrainerReward(self, {"train": self.train_dataset, "validation": validation_dataset}, answer_key)
        self.chunks = chunk_order(len(self.pool), min(self.selection.chunk_size, len(self.pool)), self.selection.seed)
        # Under torchrun the trainer's processes share each round's scoring out, as `gradalign run` does.
        chunked = dataclasses.replace(self.selection, chunk_size=len(self.chunks[0]))
        try:
            check_blocks(chunked, Scenario("trainer", self.pool, validation, []), self.accelerator.num_processes)
        except ValueError as e:
            raise TrainerArgumentError(f"selection=RunConfig(rollout_batch={self.selection.rollout_batch}): {e}") \
                from None
        self.selector = RoundSelector(self.selection, validation, reward, group=process_group(self.accelerator.device),
                                      auto_no_direction="previous")
        sample_through(self.selector, self)
        self.round_blocks: list[list[int]] = []  # the current round's generation blocks (dataset indices)
        self.round_selection = None  # the current round's `RoundSelection` (None: replayed from a checkpoint)
        self.selection_history: list[dict] = []
        self.restored_history: list[dict] = []  # rounds a resumed checkpoint had selected
        self.pending_round_logs: dict[str, float] = {}
        self.no_direction_rounds = 0

    def _get_train_sampler(self, dataset=None) -> Sampler:
        return RoundSampler(self)

    # ── each round's problems, put in when TRL generates ─────────────────────────────────────────────────────
    def _generate_and_score_completions(self, inputs):
        if not self.model.training:  # evaluation generates for its own batches
            return super()._generate_and_score_completions(inputs)
        inputs = self.round_inputs(len(inputs))
        out = super()._generate_and_score_completions(inputs)
        self.replay = None  # only the round's first generation is sampled at the selection's weights
        if self.selection_history and "reused" not in self.selection_history[-1]:
            self.note_reuse()
        return out

    def round_inputs(self, n: int) -> list[dict]:
        """This process's `n` rows of the generation TRL is about to make: its round's block, each problem
        `num_generations` times, split over processes as accelerate splits TRL's own blocks (rank r: the r-th
        slice). A round's first generation selects the round first (and takes the selection's own completions)."""
        L, ga = self.layout, self.args.gradient_accumulation_steps
        micro_step = self.state.global_step * ga + self._step % ga  # counted from the checkpoint when resumed
        r, b = divmod(micro_step // L.repeat, L.blocks_per_round)
        while len(self.selection_history) <= r:
            self.start_round()
        rank = self.accelerator.process_index
        rows = [i for i in self.round_blocks[b] for _ in range(L.num_generations)]
        share = slice(rank * n, (rank + 1) * n)
        if b == 0:
            self.replay = self.round_replay(rows, share)
        return [self.train_dataset[i] for i in rows[share]]

    def start_round(self) -> None:
        """Select the next round and lay its problems out in generation blocks (seeded by the round)."""
        r, chosen = self.select_next_round()
        L = self.layout
        rng = np.random.default_rng(round_seed(self.selection.seed, r))
        self.round_blocks = [[chosen[i] for i in block]
                             for block in plan_blocks(len(chosen), L.problems_per_block, L.blocks_per_round, rng)]
        self.ledger = Ledger()

    def round_replay(self, rows: list[int], share: slice) -> Replay | None:
        """The selection's own completions of the generation's problems (`rows`: every row's dataset index, over all
        processes; this one holds `share`; the first num_generations of each problem's group), for the generation
        at this step: same weights, same sampler. With several processes each holds only its shard's groups: they
        are gathered to every process, which keeps its rows' completions (`shared_replay`). None where they cannot
        be trained on: reuse off, methods whose rollouts are not the policy's own, k_r < num_generations, or a round
        restored from a checkpoint, or vLLM with TRL's importance-sampling correction (`replay_obstacle`)."""
        sel, k = self.round_selection, self.num_generations
        if not reusable(sel, self.selection, k, self.use_vllm, self.vllm_importance_sampling_correction):
            return None
        position = {pid: i for i, pid in enumerate(sel.rollouts.problem_ids)}
        wanted = [position[f"train:{i}"] for i in dict.fromkeys(rows) if f"train:{i}" in position]
        groups = {key: c for key, c in sel.rollouts.completion_groups(wanted, k).items() if len(c) >= k}
        if self.accelerator.num_processes == 1:  # one process: Replay decides per prompt
            return Replay(groups, step=self.state.global_step)
        keys = [tuple(ids) for ids in self.selector.tokenize([self.train_dataset[i]["prompt"] for i in rows])]
        return shared_replay(self.selector.group.gather_all(groups), keys, share, self.state.global_step)

    def note_reuse(self) -> None:
        """Add to the round's record how many groups and completions training took from the selection (summed over
        processes: each counted its own rows)."""
        record = self.selection_history[-1]
        reused = int(self.selector.group.sum(torch.tensor([self.ledger.reused["completions"]])).item())
        record["reused"] = {"groups": reused // self.num_generations, "completions": reused}
        self.pending_round_logs.update(flatten_scalars({"reused": record["reused"]}))
        if self.accelerator.is_main_process:
            fileio.write_jsonl(self.history_path, self.selection_history)

    def select_next_round(self) -> tuple[int, list[int]]:
        """The next round's number and the dataset indices selected for it, scored with the current policy."""
        r = len(self.selection_history)
        self.round_selection = None
        if r < len(self.restored_history):  # resumed from a checkpoint: replay the round as it was selected
            self.selection_history.append(self.restored_history[r])
            return r, self.restored_history[r]["selected"]
        chunk_idx = self.chunks[r % len(self.chunks)]
        chunk = [self.pool[i] for i in chunk_idx]
        model = self.accelerator.unwrap_model(self.model)
        try:
            result = self.selector.select(model, self.processing_class, chunk, round_seed(self.selection.seed, r))
        except NoDirectionError as e:
            raise NoDirectionError(f"GradAlignGRPOTrainer: round {r}: {str(e).split(' (set no_direction')[0]} "
                                   f"(pass selection=RunConfig(no_direction='auto') to continue)") from None
        chosen = [int(chunk_idx[i]) for i in result.selected] or chunk_idx.tolist()
        self.round_selection = result
        self.no_direction_rounds += result.fallback is not None
        self.record_round(self.round_record(r, chunk, result, chosen))
        log.info("round %d: selected %d of %d problems at step %d", r, len(chosen), len(chunk),
                 self.state.global_step)
        return r, chosen

    def round_record(self, r: int, chunk: list[Problem], result, chosen: list[int]) -> dict:
        """What `selection_history` and the loggers keep of a round (label-free: the trainer's data has none)."""
        cand = result.candidates
        return {"round": r, "step": self.state.global_step, "selected": chosen,
                "zero_variance": int(cand.zero_variance.sum()),
                "inconsistent": None if cand.inconsistent is None else int(cand.inconsistent.sum()),
                "filtered": len(chunk) - len(result.ranking),  # candidates the method could not choose
                "pass_rate": float(np.nanmean(cand.pass_rate)) if np.isfinite(cand.pass_rate).any() else None,
                "validation_zero_variance": result.validation_zero_variance,
                "validation_pass_rate": result.validation_pass_rate, "fallback": result.fallback,
                "scored": result.scored,  # False: the gradient-free checks decided (no gradient, no direction)
                "diagnostics": selection_diagnostics(chunk, cand.pass_rate, cand.completion_length, result.scores,
                                                     result.eligible, result.selected, set()),
                "timings": result.timings,
                "cost": result.ledger.to_dict()}  # what selection generated and scored (training: TRL's num_tokens)

    def record_round(self, record: dict) -> None:
        """Keep a round: in `selection_history`, in output_dir/selection_history.jsonl, and for the next log."""
        self.selection_history.append(record)
        self.pending_round_logs.update(flatten_scalars({k: v for k, v in record.items() if k != "selected"}))
        if self.accelerator.is_main_process:
            fileio.write_jsonl(self.history_path, self.selection_history)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.selection_history:  # the selection's state beside TRL's step metrics, each round's record once
            trained = max(self.state.global_step - 1, 0) // self.selection.steps_per_round  # the last step's round
            logs = {**logs, **self.pending_round_logs, "selection/round": min(trained, len(self.selection_history) - 1),
                    "selection/no_direction_rounds": self.no_direction_rounds}
            self.pending_round_logs = {}
        super().log(logs, start_time)

    # ── resuming: the selections made so far travel with TRL's checkpoints ───────────────────────────────────
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            fileio.write_jsonl(folder / HISTORY_FILE, self.selection_history)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """TRL's `train`; resuming from a checkpoint replays the rounds it had selected (no re-scoring), so the
        resumed run trains on the same problems as an uninterrupted one, and continues selecting after them."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        self.restored_history, self.selection_history, self.no_direction_rounds = [], [], 0
        if resume_from_checkpoint:
            path = Path(resume_from_checkpoint) / HISTORY_FILE
            if not path.exists():
                raise TrainerArgumentError(f"resume_from_checkpoint={str(resume_from_checkpoint)!r} has no "
                                           f"{HISTORY_FILE}: it was not written by GradAlignGRPOTrainer")
            self.restored_history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if self.accelerator.is_main_process:  # this run's history (a resumed one: up to its checkpoint's step)
            fileio.write_jsonl(self.history_path, self.restored_history)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    @property
    def history_path(self) -> Path:
        return Path(self.args.output_dir) / HISTORY_FILE
