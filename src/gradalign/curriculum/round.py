"""One round's selection: rollouts → per-problem gradient signals → scores → selection.

`RoundSelector` is shared by our curriculum loop and by `GradAlignGRPOTrainer` for existing TRL scripts.
It asks the method what it needs and computes only that; it never knows which method it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import RunConfig
from ..data.problem import Problem
from ..gradients import GradientBackend, get_backend
from ..gradients.signals import unit
from ..gradients.surrogate import SurrogateBatch
from ..policy.rollouts import Rollouts, SamplingConfig, sample_rollouts
from ..rewards import ProblemReward
from ..selection import Candidates, Method, SelectionOptions, get_method, select
from ..selection.base import Scored

log = logging.getLogger(__name__)


class NoDirectionError(RuntimeError):
    """Every validation group is zero-variance: the validation gradient is zero and defines no direction."""


class EmptySelectionError(RuntimeError):
    """No candidate of a round was eligible: there is nothing to train on."""


@dataclass
class RoundSelection:
    """What one round chose, and why (everything `rounds.jsonl` records about the selection)."""

    selected: np.ndarray  # indices into the chunk, best first
    candidates: Candidates
    scores: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    validation_zero_variance: int = 0
    validation_pass_rate: float = float("nan")
    fallback: str | None = None  # set when the configured no-direction fallback was used


def _seconds_since(start: float) -> float:
    return round(time.perf_counter() - start, 4)


class RoundSelector:
    def __init__(self, cfg: RunConfig, validation: list[Problem], reward: ProblemReward,
                 backend: GradientBackend | None = None):
        self.cfg = cfg
        self.method: Method = get_method(cfg.method)
        self.validation = validation
        self.reward = reward
        self.backend = backend or get_backend(cfg.gradient_backend, micro_batch=cfg.micro_batch)
        self.options = SelectionOptions(zero_variance=cfg.zero_variance, passrate_band=tuple(cfg.passrate_band))
        self.sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
        self.last_direction: torch.Tensor | None = None

    def rollouts(self, model, tokenizer, problems: list[Problem], k: int, seed: int, desc: str) -> Rollouts:
        return sample_rollouts(model, tokenizer, problems, k, self.reward, self.sampling, seed, desc=desc)

    def batch(self, rollouts: Rollouts) -> SurrogateBatch:
        return SurrogateBatch(rollouts, rollouts.advantages(self.cfg.advantage_scale))

    def validation_direction(self, model, tokenizer, seed: int) -> tuple[torch.Tensor | None, Rollouts]:
        """ĝ_V from fresh validation rollouts of the current policy (None if every group is zero-variance)."""
        rollouts = self.rollouts(model, tokenizer, self.validation, self.cfg.validation_rollouts, seed, "validation")
        if rollouts.zero_variance().all():
            return None, rollouts
        batch = self.batch(rollouts)
        if self.cfg.validation_direction == "pooled":
            g = self.backend.pooled_gradient(model, batch)
        else:
            g = self.backend.mean_unit_gradient(model, batch)
        return unit(g), rollouts

    def select(self, model, tokenizer, chunk: list[Problem], seed: int) -> RoundSelection:
        """Score `chunk` with the current `model` and pick up to `cfg.keep` problems."""
        rng = np.random.default_rng(seed)
        t = time.perf_counter()
        rollouts = self.rollouts(model, tokenizer, chunk, self.cfg.rollouts_per_problem, seed, "candidates")
        timings = {"rollouts": _seconds_since(t)}
        cand = Candidates(ids=[p.id for p in chunk], pass_rate=rollouts.pass_rates(),
                          zero_variance=rollouts.zero_variance())
        result = RoundSelection(np.zeros(0, dtype=int), cand, np.zeros(len(chunk)), timings)
        method = self.method
        if "gradients" in method.needs:
            method = self._gradient_signals(model, tokenizer, rollouts, cand, seed, result)
        t = time.perf_counter()
        scored: Scored = method.score(cand, self.options)
        result.scores = scored.scores
        result.selected = select(scored, self.cfg.keep, rng)
        timings["selection"] = _seconds_since(t)
        if len(result.selected) < self.cfg.keep:
            log.warning("round selected %d of %d wanted (%d candidates eligible)", len(result.selected),
                        self.cfg.keep, int(scored.eligible.sum()))
        return result

    def _gradient_signals(self, model, tokenizer, rollouts: Rollouts, cand: Candidates, seed: int,
                          result: RoundSelection) -> Method:
        """Fill the candidates' gradient fields; returns the method to score with (a fallback may replace it)."""
        t = time.perf_counter()
        directions = []
        if "validation" in self.method.needs:
            direction, val = self.validation_direction(model, tokenizer, seed + 1)
            result.validation_zero_variance = int(val.zero_variance().sum())
            result.validation_pass_rate = float(val.pass_rates().mean())
            result.timings["validation_rollouts"] = _seconds_since(t)
            if direction is None:
                direction, fallback = self._no_direction(len(self.validation))
                result.fallback = fallback
                if direction is None:  # fallback "random": score nothing this round
                    result.timings["scoring"] = _seconds_since(t) - result.timings["validation_rollouts"]
                    return get_method("random")
            self.last_direction = direction
            directions.append(direction)
        t_score = time.perf_counter()
        batch = self.batch(rollouts)
        if "self" in self.method.needs:
            directions.append(unit(self.backend.pooled_gradient(model, batch)))
        stacked = torch.stack(directions) if directions else torch.zeros(0, 0)
        signals = self.backend.problem_signals(model, batch, stacked)
        cand.norm = signals.norms.numpy()
        col = 0
        if "validation" in self.method.needs:
            cand.dot_val, cand.cos_val = signals.dots[:, 0].numpy(), signals.cosines(0).numpy()
            col = 1
        if "self" in self.method.needs:
            cand.cos_self = signals.cosines(col).numpy()
        result.timings["scoring"] = _seconds_since(t_score)
        return self.method

    def _no_direction(self, n_validation: int) -> tuple[torch.Tensor | None, str]:
        choice = self.cfg.no_direction
        what = (f"validation set: all {n_validation} groups are zero-variance under the current policy, "
                f"so the validation gradient is zero and defines no direction")
        if choice == "previous" and self.last_direction is not None:
            log.warning("%s; reusing the previous round's direction (no_direction: previous)", what)
            return self.last_direction, "previous"
        if choice == "random":
            log.warning("%s; selecting uniformly this round (no_direction: random)", what)
            return None, "random"
        raise NoDirectionError(f"{what} (set no_direction: random or previous to continue, or use a validation "
                               f"set the policy sometimes solves and sometimes fails)")
