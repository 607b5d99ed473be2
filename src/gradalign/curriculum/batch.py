"""`schedule: batch`: selection inside every generation batch (DAPO's dynamic sampling, generalised to any scorer).

At each GRPO generation the round's trainer asks `BatchRound.pick` for its problems. It rolls out the next
ceil(oversample × B) problems of the pool's seeded stream with `num_generations` completions each, at the current
weights, through the round's trainer (TRL's generation and every setting of it); scores them with the method (the
validation direction, also sampled through the trainer, is measured once per round, when a step first needs it: a
step whose candidates the method's gradient-free checks decide scores nothing); and trains on the best B with
those very completions (`trl_bridge.Replay`). Nothing is trained twice per selection, and the only generations
spent on selection alone are the candidates not kept and the validation rollouts. When fewer than B candidates are
eligible (zero-variance groups), the step is filled up with the next candidates in stream order: their advantages
are 0, as in plain GRPO, and the round record counts them. With `pad_steps: false` a step trains only on its chosen
groups that can teach (`step_groups`): proven noise and zero-variance groups are neither trained on nor paid for;
with `scale_short_steps` such a step also moves the weights only that share of B as far (`step_scale`); with
`max_draws` > 1 a step short of B such groups draws the next candidates of the stream and adds their best, until
it has B or has drawn `max_draws` times (DAPO's dynamic sampling: sample until the batch is full).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import NamedTuple

import numpy as np

from ..config import RunConfig
from ..data.problem import Problem
from ..selection import Candidates
from ..selection.base import can_teach
from .ledger import Ledger
from .round import DirectionOnDemand, RoundSelection, RoundSelector, seconds_since
from .setup import round_seed
from .trl_bridge import Replay, round_trainer, sampling_through, scaled_learning_rate, train_on


class BatchRound:
    """One round of the batch schedule: `steps_per_round` GRPO steps, each on the best B of its own candidates."""

    def __init__(self, cfg: RunConfig, selector: RoundSelector, pool: list[Problem]):
        self.cfg, self.selector, self.pool = cfg, selector, pool
        self.per_step = math.ceil(cfg.oversample * cfg.problems_per_step)
        self.draws = cfg.max_draws  # a step's candidates: up to this many draws of per_step
        self.generations = cfg.steps_per_round // cfg.grpo.num_iterations  # one selection per generation batch
        self.order = np.random.default_rng(cfg.seed).permutation(len(pool))  # the pool's stream, as chunk_order's
        self.summary: dict = {}

    @staticmethod
    def applies(cfg: RunConfig, selector: RoundSelector) -> bool:
        """The batch schedule runs methods that score their candidates' on-policy rollouts; the others (random, full,
        LearnAlign's warm-up, CROPI's offline rollouts) keep their own schedule."""
        return cfg.schedule == "batch" and selector.method.needs_rollouts and selector.on_policy

    def candidates(self, r: int) -> list[Problem]:
        """Round r's candidates: the next generations × draws × per_step problems of the stream (wrapping around);
        step s draws from its own draws × per_step of them, per_step at a time, only as far as it needs."""
        n = self.generations * self.draws * self.per_step
        return [self.pool[i] for i in np.resize(np.roll(self.order, -r * n), n)]

    def run(self, r: int, model, tokenizer, optimizer, scheduler, seed: int, ledger: Ledger, timings: dict
            ) -> tuple[list[Problem], RoundSelection, list[Problem], list[dict]]:
        """Train the round; returns its candidates, the steps' selections merged, the trained problems and TRL's
        step logs. `ledger` and `timings` (training: the trainer's time less the selections inside it) are filled."""
        cfg, B, k = self.cfg, self.cfg.problems_per_step, self.cfg.grpo.num_generations
        chunk = self.candidates(r)
        steps: list[list[Draw]] = []
        spent = [0.0]
        direction = None  # the round's validation direction, measured through the trainer when a step first needs it

        def draw(s: int, d: int, keep: int) -> Draw:
            offset = (s * self.draws + d) * self.per_step
            part = chunk[offset:offset + self.per_step]
            step_seed = round_seed(seed, s + 1)
            sel = self.selector.select(model, tokenizer, part, round_seed(step_seed, d) if d else step_seed,
                                       keep=keep, k=k, direction=direction)
            ledger.add(sel.ledger)
            return Draw(offset, sel, step_groups(sel, len(part), keep, cfg.pad_steps))

        def pick(trainer):
            t = time.perf_counter()
            s = len(steps)
            draws = [draw(s, 0, B)]
            while teaching(draws) < B and len(draws) < self.draws:
                draws.append(draw(s, len(draws), B - teaching(draws)))
            if not cfg.pad_steps and teaching(draws) == 0:  # nothing to teach: the first draw's idle group
                draws[0] = draws[0]._replace(picked=idle_group(draws[0].sel, self.per_step))
            steps.append(draws)
            spent[0] += time.perf_counter() - t
            groups: dict[tuple[int, ...], list[list[int]]] = {}
            for d in draws:
                for key, completions in d.sel.rollouts.completion_groups(d.picked, k).items():
                    groups.setdefault(key, []).extend(completions)
            return (np.concatenate([d.offset + d.picked for d in draws]),
                    Replay(groups, step=trainer.state.global_step))

        with round_trainer(model, tokenizer, chunk, cfg.steps_per_round, cfg, self.selector.reward, optimizer,
                           scheduler, seed, ledger=ledger, pick_batch=pick) as trainer, \
                sampling_through(self.selector, trainer), \
                short_steps_scaled(cfg, optimizer, steps):
            # the candidates sample as training would
            direction = DirectionOnDemand(self.selector, r, model, tokenizer, seed, ledger)  # steps share it
            t = time.perf_counter()
            train_log = train_on(trainer, range(len(chunk)), cfg.steps_per_round, cfg, seed)  # blocks: placeholders
            timings["training"] = round(seconds_since(t) - spent[0], 4)
        drawn = [d for draws in steps for d in draws]  # the candidates rolled out, in stream order
        merged = merge_steps([as_trained(d) for d in drawn], self.per_step, direction.measured)
        self.summary = {"steps": len(steps), "candidates_per_step": self.per_step, "problems_per_step": B,
                        "filled": int(sum(max(0, len(d.picked) - len(d.sel.selected)) for d in drawn)),
                        "groups_trained": int(sum(len(d.picked) for d in drawn)),
                        "scored": int(sum(d.sel.scored for d in drawn))}
        if self.draws > 1:
            self.summary["draws"] = [len(draws) for draws in steps]
        if cfg.scale_short_steps:
            self.summary["learning_rate_scales"] = [round(step_scale(draws, B), 4) for draws in steps]
        candidates = [p for d in drawn for p in chunk[d.offset:d.offset + self.per_step]]
        return candidates, merged, [chunk[d.offset + i] for d in drawn for i in d.picked], train_log


class Draw(NamedTuple):
    """One draw of a step's candidates: where they start in the round's candidates, their selection, and the
    groups (indices among them) the step trains on."""
    offset: int
    sel: RoundSelection
    picked: np.ndarray


def as_trained(d: Draw) -> RoundSelection:
    """A draw's selection as its step trained it: the chosen candidates the step trained on, best first (with
    `pad_steps: false`, those that can teach), so that the record's selection and its diagnostics describe what was
    trained, not the groups an unpadded step declined."""
    return dataclasses.replace(d.sel, selected=d.sel.selected[np.isin(d.sel.selected, d.picked)])


def teaching(draws: list[Draw]) -> int:
    """How many groups that can teach a step's draws give it."""
    return sum(int(np.count_nonzero(can_teach(d.sel.candidates)[d.picked])) for d in draws)


def step_groups(sel: RoundSelection, n: int, size: int, pad: bool) -> np.ndarray:
    """The candidates (indices among the draw's n) a step trains on. `pad`: the selection filled up to `size`
    (`fill_up`). Otherwise only the chosen ones that can teach (`can_teach`), so that a step with few of them costs
    less and adds no noise (none at all: `idle_group`)."""
    if pad:
        return fill_up(sel.selected, n, size)
    teach = can_teach(sel.candidates)
    return np.asarray([i for i in sel.selected if teach[i]], dtype=int)


def idle_group(sel: RoundSelection, n: int) -> np.ndarray:
    """What an unpadded step with nothing to teach trains on: one zero-variance group (a loss of 0: only the
    optimiser's momentum moves the weights) or, lacking one, the selection's best."""
    idle = np.flatnonzero(sel.candidates.zero_variance)
    return idle[:1] if len(idle) else fill_up(sel.selected, n, 1)[:1]


def short_steps_scaled(cfg: RunConfig, optimizer, steps: list[list[Draw]]):
    """With `scale_short_steps`, every optimiser step at the learning rate × `step_scale` of the step picked last
    (the generation it trains on); otherwise nothing."""
    if not cfg.scale_short_steps:
        return contextlib.nullcontext()
    B = cfg.problems_per_step
    return scaled_learning_rate(optimizer, lambda: step_scale(steps[-1], B) if steps else 1.0)


def step_scale(draws: list[Draw], size: int) -> float:
    """The share of a full step (`size` groups) that the step's groups which can teach make up: its learning-rate
    factor under `scale_short_steps` (0 for a step of one zero-variance group, which has nothing to teach)."""
    return teaching(draws) / size


def fill_up(selected: np.ndarray, n: int, size: int) -> np.ndarray:
    """The selection, then the other candidates in their order until `size` (a step trains on B groups)."""
    chosen = set(int(i) for i in selected)
    rest = [i for i in range(n) if i not in chosen]
    return np.concatenate([np.asarray(selected, dtype=int), np.asarray(rest[:max(0, size - len(selected))], dtype=int)])


def merge_steps(selections: list[RoundSelection], per_step: int, direction) -> RoundSelection:
    """The round's view of its steps' selections: candidates and scores in stream order, selections and rankings as
    indices into the round's candidates, timings added up (`direction`: the one this round measured, counted once)."""
    offsets = [s * per_step for s in range(len(selections))]
    cands = [sel.candidates for sel in selections]
    fields = {}
    for f in dataclasses.fields(Candidates):
        values = [getattr(c, f.name) for c in cands]
        if f.name == "ids":
            fields[f.name] = [i for v in values for i in v]
        elif all(v is not None for v in values):
            fields[f.name] = _stack(values)
    timings: dict[str, float] = {}
    for sel in selections:
        for key, value in sel.timings.items():
            timings[key] = round(timings.get(key, 0.0) + value, 4)
    if direction is not None:
        timings["validation_rollouts"] = direction.seconds
    first = next((sel for sel in selections if sel.scored), selections[0])  # the validation figures: a scored step's
    return RoundSelection(
        selected=np.concatenate([o + sel.selected for o, sel in zip(offsets, selections)]),
        candidates=Candidates(**fields), scores=np.concatenate([sel.scores for sel in selections]), timings=timings,
        validation_zero_variance=first.validation_zero_variance, validation_pass_rate=first.validation_pass_rate,
        fallback=next((sel.fallback for sel in selections if sel.fallback), None),
        ranking=np.concatenate([o + sel.ranking for o, sel in zip(offsets, selections)]),
        scored=any(sel.scored for sel in selections))


def _stack(values: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-candidate arrays; [n, k] ones padded with NaN to the widest k."""
    if values[0].ndim == 1:
        return np.concatenate(values)
    width = max(v.shape[1] for v in values)
    return np.concatenate([np.pad(v.astype(float), ((0, 0), (0, width - v.shape[1])), constant_values=np.nan)
                           for v in values])
