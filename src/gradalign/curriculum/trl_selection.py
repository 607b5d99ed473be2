"""GradAlign inside an existing TRL script: `GradAlignGRPOTrainer` is a drop-in `GRPOTrainer`.

Every `selection.steps_per_round` steps its sampler takes the next chunk of the training dataset, scores it with
the current policy (the same `RoundSelector` as `gradalign run`, with the trainer's own reward functions) and
feeds TRL the selected problems in TRL's own sampler layout.

One difference from `gradalign run`: accelerate's data loader reads one batch ahead, so a round's selection is
made just before the previous round's last GRPO step, not after it. `gradalign run` rebuilds the trainer per
round and has exact round boundaries.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
from datasets import Dataset
from torch.utils.data import Sampler
from trl import GRPOTrainer

from ..config import RunConfig
from ..data.problem import Problem
from ..data.regimes import Scenario
from ..distributed import process_group
from ..selection import get_method
from .loop import check_sharding, chunk_order, round_seed
from .round import RoundSelector
from .trl_bridge import plan_blocks

log = logging.getLogger(__name__)


class DatasetReward:
    """Scores completions with a trainer's TRL reward functions, passing each problem's dataset columns.

    Quacks like `ProblemReward` (`batch(completions, answers, metadatas)`): the metadata carries the
    problem id, which names the dataset and row the columns come from.
    """

    def __init__(self, reward_funcs: list, weights: list[float], datasets: dict[str, Dataset]):
        self.funcs, self.weights, self.datasets = reward_funcs, weights, datasets

    def batch(self, completions: list[str], answers: list[str], metadatas: list[dict]) -> list[float]:
        rows = [self.row(m["problem_id"]) for m in metadatas]
        columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
        prompts = [r["prompt"] for r in rows]
        total = np.zeros(len(completions))
        for func, weight in zip(self.funcs, self.weights):
            values = func(prompts=prompts, completions=completions, **columns)
            total += weight * np.array([np.nan if v is None else v for v in values], dtype=float)
        return np.nan_to_num(total).tolist()

    def row(self, problem_id: str) -> dict[str, Any]:
        name, index = problem_id.rsplit(":", 1)
        return self.datasets[name][int(index)]


def dataset_problems(dataset: Dataset, name: str) -> list[Problem]:
    """Problems whose ids point back at dataset rows (the reward reads the row, so no answer column is needed)."""
    return [Problem(id=f"{name}:{i}", prompt=row["prompt"], answer="", source=name) for i, row in enumerate(dataset)]


class RoundSampler(Sampler):
    """Per round: select from the next chunk with the trainer's current model, then yield the selection's blocks."""

    def __init__(self, trainer: "GradAlignGRPOTrainer"):
        self.trainer = trainer
        args = trainer.args
        self.problems_per_block = args.generation_batch_size // trainer.num_generations
        self.repeat = trainer.num_iterations * args.steps_per_generation
        self.blocks_per_round = max(1, trainer.selection.steps_per_round // self.repeat)
        self.rounds = -(-args.max_steps // trainer.selection.steps_per_round)

    def __iter__(self):
        for r in range(self.rounds):
            chosen = self.trainer.select_round(r)
            rng = np.random.default_rng(round_seed(self.trainer.selection.seed, r))
            for block in plan_blocks(len(chosen), self.problems_per_block, self.blocks_per_round, rng):
                for _ in range(self.repeat):
                    for i in block:
                        yield from [chosen[i]] * self.trainer.num_generations

    def __len__(self) -> int:
        return self.rounds * self.blocks_per_round * self.repeat * self.problems_per_block * self.trainer.num_generations


class GradAlignGRPOTrainer(GRPOTrainer):
    """A `GRPOTrainer` that trains each round on the problems GradAlign (or any registered method) selects.

    Args (in addition to GRPOTrainer's):
        validation_dataset: trusted validation problems, same columns as `train_dataset`.
        selection: a `RunConfig` for the selection knobs (method, chunk_size, selection_ratio,
            rollouts_per_problem, validation_rollouts, steps_per_round, ...). Sampling settings
            (temperature, top_p, max_new_tokens) are taken from the GRPO args so selection samples like training.
    """

    def __init__(self, *args, validation_dataset: Dataset | None = None, selection: RunConfig | None = None, **kw):
        super().__init__(*args, **kw)
        if self.args.max_steps is None or self.args.max_steps <= 0:
            raise ValueError("GradAlignGRPOTrainer needs args.max_steps > 0 (rounds are counted in steps)")
        base = selection or RunConfig()
        self.selection = RunConfig(**{**base.to_dict(), "temperature": self.args.temperature,
                                      "top_p": self.args.top_p, "max_new_tokens": self.args.max_completion_length})
        unsupported = {"warmup", "offline"} & get_method(self.selection.method).needs
        if unsupported:  # a warm-up would nest a second GRPO trainer; offline stores belong to `gradalign run`
            raise ValueError(f"GradAlignGRPOTrainer cannot run method '{self.selection.method}' (it needs "
                             f"{', '.join(sorted(unsupported))}); use `gradalign run` or `gradalign select`")
        self.pool = dataset_problems(self.train_dataset, "train")
        validation = dataset_problems(validation_dataset, "validation") if validation_dataset is not None else []
        reward = DatasetReward(self.reward_funcs, self.reward_weights.tolist(),
                               {"train": self.train_dataset, "validation": validation_dataset})
        self.chunks = chunk_order(len(self.pool), min(self.selection.chunk_size, len(self.pool)), self.selection.seed)
        # Under torchrun the trainer's processes share each round's scoring out, as `gradalign run` does.
        chunked = dataclasses.replace(self.selection, chunk_size=len(self.chunks[0]))
        check_sharding(chunked, Scenario("trainer", self.pool, validation, []), self.accelerator.num_processes)
        group = process_group(self.accelerator.device)
        self.selector = RoundSelector(self.selection, validation, reward, group=group)
        self.selection_history: list[dict] = []

    def _get_train_sampler(self, dataset=None) -> Sampler:
        return RoundSampler(self)

    def select_round(self, r: int) -> list[int]:
        """Dataset indices selected for round r, scored with the current policy."""
        chunk_idx = self.chunks[r % len(self.chunks)]
        chunk = [self.pool[i] for i in chunk_idx]
        model = self.accelerator.unwrap_model(self.model)
        result = self.selector.select(model, self.processing_class, chunk, round_seed(self.selection.seed, r))
        chosen = [int(chunk_idx[i]) for i in result.selected] or chunk_idx.tolist()
        self.selection_history.append({"round": r, "step": self.state.global_step, "selected": chosen,
                                       "zero_variance": int(result.candidates.zero_variance.sum()),
                                       "timings": result.timings})
        log.info("round %d: selected %d of %d problems at step %d", r, len(chosen), len(chunk),
                 self.state.global_step)
        return chosen
