"""One round's selection: rollouts → per-problem gradient signals → scores → selection.

`RoundSelector` is shared by our curriculum loop and by `GradAlignGRPOTrainer` for existing TRL scripts.
It asks the method what it needs and computes only that; it never knows which method it runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import RunConfig
from ..data.problem import Problem
from ..distributed import SINGLE, ProcessGroup, shard_group
from ..gradients import GradientBackend, get_backend
from ..gradients.projections import configured_projector, gradient_energy
from ..gradients.scope import scoring_scope
from ..gradients.signals import EPS, unit
from ..gradients.surrogate import SurrogateBatch, completion_logps
from ..policy.load import eval_mode, mixed_precision
from ..policy.rollouts import Rollouts, SamplingConfig, add_completions, reward_keys, sample_rollouts
from ..rewards import ProblemReward
from ..selection import Candidates, Method, SelectionOptions, get_method, select
from ..selection.base import Scored
from .ledger import Ledger

log = logging.getLogger(__name__)

ENERGY_SAMPLE = 64  # problems the projection's energy split is measured on
GRADIENT_NEEDS = frozenset({"gradients", "features", "offline"})  # a method that needs one computes gradients


class NoDirectionError(RuntimeError):
    """Every validation group is zero-variance: the validation gradient is zero and defines no direction."""


class EmptySelectionError(RuntimeError):
    """No candidate of a round was eligible: there is nothing to train on."""


@dataclass
class Direction:
    """ĝ_V under one policy (None: every validation group was zero-variance) and what its rollouts showed."""

    vector: torch.Tensor | None
    pass_rates: np.ndarray
    zero_variance: np.ndarray
    seconds: float


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
    ranking: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # all eligible, best first
    warmup: dict | None = None  # LearnAlign: the warm-up's problems, steps and mean training reward
    validation_sets: list[str] | None = None  # CROPI: the validation sets that gave a direction
    offpolicy: dict | None = None  # CROPI with offpolicy_fidelity: agreement with on-policy gradients
    ledger: Ledger = field(default_factory=Ledger)  # what this selection generated and scored
    rollouts: Rollouts | None = None  # the candidates' on-policy rollouts (None: offline, warm-up or none), for reuse
    scored: bool = True  # whether it computed gradients: False for a gradient-free method, or when its checks decided

    @property
    def eligible(self) -> np.ndarray:
        """[n] bool: the candidates the method could choose (every eligible one is in `ranking`)."""
        mask = np.zeros(len(self.scores), dtype=bool)
        mask[self.ranking] = True
        return mask


class DirectionOnDemand:
    """A round's validation direction, measured (`RoundSelector.round_direction`) when a selection first needs it:
    a round whose selections the gradient-free checks decide pays for no validation rollouts. A run's first
    direction (also a resumed run's) is measured at once, so that a validation set that defines none stops or
    falls back before anything is trained. `measured`: the direction this round measured, once it has."""

    def __init__(self, selector: "RoundSelector", r: int, model, tokenizer, seed: int, ledger: Ledger):
        self.selector, self.r, self.model, self.tokenizer, self.seed, self.ledger = (selector, r, model, tokenizer,
                                                                                     seed, ledger)
        self.direction: Direction | None = None
        self.measured: Direction | None = None
        if selector.direction is None and "validation" in selector.method.needs:
            self()

    def __call__(self) -> Direction | None:
        if self.direction is None:
            self.direction, self.measured = self.selector.round_direction(self.r, self.model, self.tokenizer,
                                                                          self.seed, self.ledger)
        return self.direction


def no_direction(direction: Direction | DirectionOnDemand | None) -> bool:
    """Whether a validation direction is known to be missing (every validation group zero-variance): the round
    then takes the no-direction rules (`no_direction`), whatever else could decide it."""
    measured = direction.direction if isinstance(direction, DirectionOnDemand) else direction
    return measured is not None and measured.vector is None


def reference_logps(model, rollouts: Rollouts, micro_batch: int) -> torch.Tensor:
    """log π_ref of every completion token under `model` (no gradient), [N, C]."""
    rows = torch.arange(rollouts.group.numel())
    with torch.no_grad():
        return torch.cat([completion_logps(model, rollouts, r).float().cpu() for r in rows.split(micro_batch)])


def learnalign_features(scorer, reference, rollouts: Rollouts, live: np.ndarray, projector_for, cfg: RunConfig,
                        energy_sample: np.ndarray | None = None) -> np.ndarray:
    """LearnAlign's unit projected GRPO gradients ĝ(x) at `scorer`, [n, projection_dim] (zero rows where not `live`).

    Group-normalised advantages, GRPO's sequence-mean aggregation and, with a `reference` (the policy a warm-up
    started from; at that policy itself the term would vanish), the KL term against it. `projector_for(model,
    batch, energy_sample)` builds the projection (energy split measured on `energy_sample`, positions among the
    live problems); every rank builds it, live problems or not, as its energy split is summed over ranks.
    """
    idx = np.flatnonzero(live)
    features = np.zeros((len(live), cfg.projection_dim), dtype=np.float32)
    sub = rollouts.select_problems(idx)
    kl = reference is not None and cfg.kl_beta > 0 and len(idx) > 0
    batch = SurrogateBatch(sub, sub.advantages("group"), aggregation="sequence-mean",
                           reference_logps=reference_logps(reference, sub, cfg.micro_batch) if kl else None,
                           kl_beta=cfg.kl_beta if kl else 0.0)
    projector = projector_for(scorer, batch, energy_sample)
    if len(idx):
        phi = projector.features(scorer, batch, cfg.micro_batch).float()
        features[idx] = (phi / (phi.norm(dim=1, keepdim=True) + EPS)).cpu().numpy()
    return features


def by_problem(rollouts: Rollouts, values: np.ndarray) -> np.ndarray:
    """Per-row values as [n, k_max], each problem's completions in row order (NaN pads smaller groups)."""
    group = rollouts.group.numpy()
    counts = np.bincount(group, minlength=rollouts.num_problems)
    out = np.full((rollouts.num_problems, max(int(counts.max(initial=0)), 1)), np.nan)
    order = np.argsort(group, kind="stable")
    position = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[group[order], position] = values[order]
    return out


def seconds_since(start: float) -> float:
    return round(time.perf_counter() - start, 4)


class RoundSelector:
    def __init__(self, cfg: RunConfig, validation: list[Problem], reward: ProblemReward,
                 backend: GradientBackend | None = None, pool: list[Problem] | None = None,
                 group: ProcessGroup = SINGLE, tokenize=None, auto_no_direction: str = "error"):
        self.cfg = cfg
        self.group = group  # several processes: each rolls out and scores its blocks of every problem list
        self.method: Method = get_method(cfg.method)
        self.validation = validation
        self.pool = pool  # LearnAlign's warm-up draws its random subset from here (default: the chunk)
        self.reward = reward
        self.backend = backend or get_backend(cfg.gradient_backend, micro_batch=cfg.micro_batch)
        self.options = SelectionOptions(zero_variance=cfg.zero_variance, passrate_band=tuple(cfg.passrate_band))
        length = cfg.grpo.max_completion_length
        self.sampling = SamplingConfig(temperature=cfg.grpo.temperature, top_p=cfg.grpo.top_p, max_new_tokens=length,
                                       prompts_per_batch=cfg.rollout_batch)
        # LearnAlign estimates p(x) under the warmed-up policy itself: temperature 1.0 (paper), no nucleus cut.
        self.feature_sampling = SamplingConfig(temperature=cfg.learnalign_temperature, top_p=1.0,
                                               max_new_tokens=length, prompts_per_batch=cfg.rollout_batch)
        self.tokenize = tokenize  # prompts -> token ids (default: `tokenize_prompts`, as TRL tokenizes them)
        # k -> the training sampler for k completions per prompt (`trl_bridge.TrainerSampler`), set by the caller
        # that holds the trainer of the policy being selected for; None: our own `PaddedSampler`.
        self.sampler = None
        self.auto_no_direction = auto_no_direction  # what `no_direction: auto` means for this caller
        self.last_direction: torch.Tensor | None = None
        self.direction: Direction | None = None  # the last `round_direction` measured (`validation_every`)
        self.last_warmup: dict | None = None
        self.progress = ""  # what each phase's log line starts with (the loop sets e.g. "round 3/8: ")

    def rollouts(self, model, tokenizer, problems: list[Problem], k: int, seed: int, desc: str,
                 sampling: SamplingConfig | None = None, blocks: list[int] | None = None) -> Rollouts:
        """k completions per problem: with the training sampler (`sampler`, a TRL trainer's) when one is set and
        `sampling` is training's, else with our own at `sampling`."""
        sampling = sampling or self.sampling
        generate = self.sampler(k) if self.sampler is not None and sampling is self.sampling else None
        return sample_rollouts(model, tokenizer, problems, k, self.reward, sampling, seed, desc=desc, blocks=blocks,
                               shards=shard_group(self.group, model), tokenize=self.tokenize, generate=generate)

    def candidate_rollouts(self, model, tokenizer, chunk: list[Problem], k: int, seed: int,
                           sampling: SamplingConfig, blocks: list[int]) -> Rollouts:
        """k completions per candidate; with `sequential_rollouts` k0, k0 first and the other k - k0 only for the
        candidates whose first k0 disagree (the others keep k0, zero-variance)."""
        k0 = self.cfg.sequential_rollouts
        first = self.rollouts(model, tokenizer, chunk, k0 if 0 < k0 < k else k, seed, "candidates", sampling,
                              blocks=blocks)
        disagree = np.flatnonzero(~first.zero_variance())
        if not 0 < k0 < k or not len(disagree):
            return first
        by_id = {p.id: p for p in chunk}
        more = self.rollouts(model, tokenizer, [by_id[first.problem_ids[i]] for i in disagree], k - k0,
                             int(np.random.SeedSequence([seed, 2]).generate_state(1)[0]), "candidates", sampling)
        return add_completions(first, more, disagree, tokenizer.pad_token_id)

    def inconsistent(self, rollouts: Rollouts, chunk: list[Problem]) -> np.ndarray:
        """The candidates whose rollouts rewarded one answer two ways (as the reward reads answers, `reward_keys`)."""
        by_id = {p.id: p for p in chunk}
        problems = [by_id[rollouts.problem_ids[g]] for g in rollouts.group.tolist()]
        return rollouts.inconsistent_rewards(reward_keys(self.reward, problems, rollouts.completions))

    def batch(self, rollouts: Rollouts) -> SurrogateBatch:
        return SurrogateBatch(rollouts, rollouts.advantages(self.cfg.advantage_scale))

    def validation_direction(self, model, tokenizer, seed: int, ledger: Ledger | None = None) -> Direction:
        """ĝ_V from fresh validation rollouts of the current policy (None if every group is zero-variance), and
        every validation problem's pass rate and zero-variance flag, counted into `ledger`. Sharded: each rank rolls
        out its blocks; the gradient is summed over ranks."""
        t = time.perf_counter()
        vector, pass_rates, zero_variance = self._validation_direction(model, tokenizer, seed, ledger or Ledger())
        direction = Direction(vector, pass_rates, zero_variance, seconds_since(t))
        log.info("%svalidation direction: %d problems × %d completions (%d zero-variance), %.1f s", self.progress,
                 len(pass_rates), self.cfg.validation_rollouts, int(zero_variance.sum()), direction.seconds)
        return direction

    def measure_direction(self, model, tokenizer, seed: int, ledger: Ledger) -> Direction:
        """`validation_direction` as a selection computes it (autocast, no dropout, the scored parameters), for
        callers that reuse one direction across several selections."""
        with mixed_precision(model), eval_mode(model), scoring_scope(model, self.cfg.score_parameters):
            return self.validation_direction(model, tokenizer, seed, ledger)

    def round_direction(self, r: int, model, tokenizer, seed: int, ledger: Ledger
                        ) -> tuple[Direction | None, Direction | None]:
        """(the direction round r scores against, the one it measured or None): measured at rounds that are
        multiples of `validation_every` (and at a resumed run's first round), reused in between; (None, None)
        for methods without a validation direction."""
        if "validation" not in self.method.needs:
            return None, None
        measured = None
        if self.direction is None or r % self.cfg.validation_every == 0:
            self.direction = measured = self.measure_direction(model, tokenizer, seed + 1, ledger)
        return self.direction, measured

    def _validation_direction(self, model, tokenizer, seed: int, ledger: Ledger):
        n = len(self.validation)
        blocks, owned = self.group.shard(n, self.cfg.rollout_batch)
        rollouts = self.rollouts(model, tokenizer, self.validation, self.cfg.validation_rollouts, seed, "validation",
                                 blocks=blocks)
        whole = self.group.gather_fields({"pass_rates": rollouts.pass_rates(),
                                          "zero_variance": rollouts.zero_variance()}, owned, n)
        pass_rates, zero_variance = whole["pass_rates"], whole["zero_variance"]
        ledger.generate("validation", rollouts.group.numel(), rollouts.generated_tokens)
        if zero_variance.all():
            return None, pass_rates, zero_variance
        ledger.pass_through("scoring", self.backend.tokens_read(model, rollouts))
        batch = self.batch(rollouts)
        if self.cfg.validation_direction == "pooled":
            g = self.backend.pooled_gradient(model, batch, self.group)
        else:
            g = self.backend.mean_unit_gradient(model, batch, self.group)
        return unit(g, shard_group(self.group, model)), pass_rates, zero_variance

    def select(self, model, tokenizer, chunk: list[Problem], seed: int, keep: int | None = None,
               offline=None, k: int | None = None, direction: Direction | DirectionOnDemand | None = None
               ) -> RoundSelection:
        """Score `chunk` with the current `model` and pick up to `keep` (default `cfg.keep`) problems (in bf16
        autocast on GPUs that support it, as training computes), from `k` rollouts each (default
        `cfg.rollouts_per_problem`). `direction`: a validation direction measured earlier, or one measured on
        demand (default: measured now, when needed). CROPI scores the rollouts of `offline`, an
        `offline.OfflineInfluence` made once per run."""
        if "offline" in self.method.needs and offline is None:
            raise ValueError(f"method '{self.cfg.method}' scores offline rollouts: pass offline= (offline_influence)")
        with mixed_precision(model), eval_mode(model):  # no dropout in scores, as in the rollouts they score
            return self._select(model, tokenizer, chunk, seed, keep, offline, k or self.cfg.rollouts_per_problem,
                                direction)

    @property
    def on_policy(self) -> bool:
        """Whether the method's candidate rollouts are samples of the policy itself with the training sampling
        settings (not a warm-up's, LearnAlign's temperature or CROPI's offline ones): training may reuse them."""
        return self.method.reads_rollouts and not {"warmup", "features", "offline"} & self.method.needs

    def _select(self, model, tokenizer, chunk: list[Problem], seed: int, keep: int | None, offline, k: int,
                direction: Direction | DirectionOnDemand | None) -> RoundSelection:
        keep = self.cfg.keep if keep is None else keep
        rng = np.random.default_rng(seed)
        needs = self.method.needs
        timings: dict[str, float] = {}
        scorer, reference = model, None
        ledger = Ledger()
        if "warmup" in needs:  # LearnAlign: score with θ_s, a briefly GRPO-trained copy of the current policy
            t = time.perf_counter()
            scorer, reference = self.warm_up(model, tokenizer, chunk, seed, ledger), model
            timings["warmup"] = seconds_since(t)
            log.info("%swarm-up: a copy trained on the chunk, %.1f s", self.progress, timings["warmup"])
        t = time.perf_counter()
        blocks, owned = self.group.shard(len(chunk), self.cfg.rollout_batch)  # one process: every block
        if not self.method.reads_rollouts:  # a uniform draw: nothing to sample
            rollouts = None
            n = len(owned)
            cand = Candidates(ids=[chunk[i].id for i in owned], pass_rate=np.full(n, np.nan),
                              zero_variance=np.zeros(n, dtype=bool), completion_length=np.full(n, np.nan))
        else:
            if "offline" in needs:  # CROPI: the behaviour policy's rollouts, sampled once, reused at every stage
                rollouts = offline.load([chunk[i].id for i in owned])
            else:
                sampling = self.feature_sampling if "features" in needs else self.sampling
                rollouts = self.candidate_rollouts(scorer, tokenizer, chunk, k, seed, sampling, blocks)
                ledger.generate("candidates", rollouts.group.numel(), rollouts.generated_tokens)
            cand = Candidates(ids=[chunk[i].id for i in owned], pass_rate=rollouts.pass_rates(),
                              zero_variance=rollouts.zero_variance(), completion_length=rollouts.mean_lengths(),
                              inconsistent=self.inconsistent(rollouts, chunk))
        timings["rollouts"] = seconds_since(t)
        if rollouts is not None:
            log.info("%scandidates: %d problems, %d completions, %d zero-variance, %d with inconsistent rewards, "
                     "%.1f s", self.progress, len(owned), rollouts.group.numel(), int(cand.zero_variance.sum()),
                     int(cand.inconsistent.sum()), timings["rollouts"])
        result = RoundSelection(np.zeros(0, dtype=int), cand, np.zeros(len(chunk)), timings,
                                warmup=self.last_warmup if "warmup" in needs else None, ledger=ledger,
                                rollouts=rollouts if self.on_policy else None)
        method, scope = self.method, self.cfg.score_parameters  # scope: the parameters scored (all by default)
        early = (self._decided_early(cand, owned, chunk, keep)
                 if rollouts is not None and not no_direction(direction) else None)
        result.scored = early is None and bool(needs & GRADIENT_NEEDS)
        if "gradients" in needs and early is not None:
            timings["scoring"] = 0.0  # every round of a gradient method reports its scoring time
        elif "gradients" in needs:
            if isinstance(direction, DirectionOnDemand) and "validation" in needs:  # before the scope: it sets its own
                direction = direction()  # the round books its seconds and completions
            with scoring_scope(model, scope):
                method = self._gradient_signals(model, tokenizer, rollouts, cand, seed, result, direction)
        if "features" in needs:
            with scoring_scope(scorer, scope):
                self._features(scorer, reference, rollouts, cand, result, owned, len(chunk))
        phi = None
        if "offline" in needs:
            with scoring_scope(model, scope):
                phi = self._offline_signals(model, offline, rollouts, cand, result)
        if phi is None and "offline" in needs:  # no validation set gives a direction: the configured fallback
            method = get_method("random")
        cand = result.candidates = self.gather_candidates(cand, owned, [p.id for p in chunk])
        t = time.perf_counter()
        decision = None
        if self.group.is_main:  # rank 0 decides; every rank trains on its decision
            scored: Scored = (early if early is not None
                              else method.score(cand, dataclasses.replace(self.options, keep=keep)))
            decision = scored.scores, select(scored, len(chunk), rng), int(scored.eligible.sum())
        result.scores, result.ranking, eligible = self.group.broadcast(decision)  # ranking: all eligible, best first
        result.selected = result.ranking[:keep]
        timings["selection"] = seconds_since(t)
        log.info("%sselected %d of %d (%d eligible)", self.progress, len(result.selected), len(chunk), eligible)
        if len(result.selected) < keep:
            log.warning("selected %d of %d wanted (%d candidates eligible)", len(result.selected), keep, eligible)
        if phi is not None and self.cfg.offpolicy_fidelity:
            t = time.perf_counter()
            with scoring_scope(model, scope):
                result.offpolicy = offline.fidelity(model, tokenizer, chunk, self.validation, self.reward, phi,
                                                    result.selected, keep, seed)
            timings["offpolicy_check"] = seconds_since(t)
        return result

    def _decided_early(self, cand: Candidates, owned: np.ndarray, chunk: list[Problem], keep: int
                       ) -> Scored | None:
        """The method's scores when its gradient-free checks decide the selection (`Method.decide_early`), else
        None. Every rank decides alike, on the whole chunk's candidates."""
        if self.method.decide_early is None:
            return None
        whole = self.gather_candidates(cand, owned, [p.id for p in chunk])
        scored = self.method.decide_early(whole, dataclasses.replace(self.options, keep=keep))
        if scored is not None:
            log.info("%sno scoring: the gradient-free checks decide which %d of %d eligible to keep", self.progress,
                     min(keep, int(scored.eligible.sum())), int(scored.eligible.sum()))
        return scored

    def gather_candidates(self, local: Candidates, owned: np.ndarray, ids: list[str]) -> Candidates:
        """The whole chunk's candidates from every rank's own rows (one process: the rows themselves)."""
        if not self.group.sharded:
            return local
        fields = {f.name: getattr(local, f.name) for f in dataclasses.fields(Candidates)
                  if f.name != "ids" and getattr(local, f.name) is not None}
        return Candidates(ids=ids, **self.group.gather_fields(fields, owned, len(ids)))

    # ── CROPI: off-policy signals from the offline rollouts ─────────────────────────────────────────────────
    def _offline_signals(self, model, offline, rollouts: Rollouts, cand: Candidates, result: RoundSelection):
        """cos(φ(x), φ_v) per validation set at the current policy; None when no set gives a direction."""
        t = time.perf_counter()
        directions = offline.directions(model)
        if directions is None:
            _, result.fallback = self._no_direction(len(self.validation))  # raises unless a fallback is configured
            return None
        result.validation_sets = directions.names
        result.ledger.pass_through("scoring", directions.tokens)
        phi = offline.signals(model, rollouts, cand, directions)
        result.ledger.pass_through("scoring", rollouts.select_problems(np.flatnonzero(~cand.zero_variance)).tokens)
        result.timings["scoring"] = seconds_since(t)
        return phi

    # ── LearnAlign: warm-up and projected features ───────────────────────────────────────────────────────
    def warm_up(self, model, tokenizer, chunk: list[Problem], seed: int, ledger: Ledger | None = None):
        """θ_s: `warmup_steps` GRPO steps on a seeded random subset of the pool, trained on a copy of `model`
        with its own fresh optimiser (the policy itself is untouched); its cost is booked as `warmup` in
        `ledger`."""
        source = self.pool or chunk
        rng = np.random.default_rng([seed, 1])
        subset = [source[i] for i in rng.choice(len(source), min(self.cfg.warmup_problems, len(source)),
                                                replace=False)]
        # Imported here: TRL and the model classes are heavy, and only LearnAlign's warm-up needs them.
        from ..policy.load import clone_policy
        from .trl_bridge import grpo_steps, new_optimizer
        scorer = clone_policy(model)
        optimizer, scheduler = new_optimizer(scorer, self.cfg)
        mu = self.cfg.grpo.num_iterations  # TRL reuses each generation batch mu times: whole multiples of mu
        steps = max(mu, self.cfg.warmup_steps - self.cfg.warmup_steps % mu)
        spent = Ledger()
        train_log = grpo_steps(scorer, tokenizer, subset, steps, self.cfg, self.reward, optimizer, scheduler, seed,
                               ledger=spent)
        if ledger is not None:
            ledger.add(spent, as_phase="warmup")
        self.last_warmup = {"problems": len(subset), "steps": steps,
                            "reward": float(np.mean([row["reward"] for row in train_log if "reward" in row] or [0]))}
        del optimizer, scheduler
        scorer.eval()
        return scorer

    def _features(self, scorer, reference, rollouts: Rollouts, cand: Candidates, result: RoundSelection,
                  owned: np.ndarray, n_chunk: int) -> None:
        """`learnalign_features` of the non-zero-variance candidates. Zero-variance rows stay 0: their V is 0, so they
        score 0 and add nothing to the pool direction."""
        t = time.perf_counter()
        cand.features = learnalign_features(scorer, reference, rollouts, ~cand.zero_variance, self.projector,
                                            self.cfg, self._energy_sample(cand, owned, n_chunk))
        result.ledger.pass_through("scoring", rollouts.select_problems(np.flatnonzero(~cand.zero_variance)).tokens)
        result.timings["scoring"] = seconds_since(t)

    def _energy_sample(self, cand: Candidates, owned: np.ndarray, n_chunk: int) -> np.ndarray:
        """Which of this rank's live candidates measure the energy split: those among the chunk's first 64 live
        problems (every rank then builds the projection one process would)."""
        zero_variance = self.group.gather(cand.zero_variance, owned, n_chunk)
        first = set(np.flatnonzero(~zero_variance)[:ENERGY_SAMPLE].tolist())
        return np.array([j for j, i in enumerate(owned[~cand.zero_variance]) if int(i) in first], dtype=int)

    def projector(self, model, batch: SurrogateBatch, sample: np.ndarray | None = None):
        """The configured projection; energy splits are measured on `sample` (positions in `batch`; default its
        first 64 problems), summed over ranks."""
        def measure_energy():
            chosen = np.arange(min(batch.num_problems, ENERGY_SAMPLE)) if sample is None else sample
            part = batch if len(chosen) == batch.num_problems else batch.subset(chosen)
            return gradient_energy(model, part, self.cfg.micro_batch, group=self.group)

        name = self.cfg.projection_for(self.method.projection)
        return configured_projector(name, self.cfg.projection_dim, self.cfg.seed, measure_energy)

    def _gradient_signals(self, model, tokenizer, rollouts: Rollouts, cand: Candidates, seed: int,
                          result: RoundSelection, measured: Direction | None = None) -> Method:
        """Fill the candidates' gradient fields; returns the method to score with (a fallback may replace it).
        `measured`: a direction measured earlier (its rollouts were counted then), else measured now."""
        t = time.perf_counter()
        directions = []
        if "validation" in self.method.needs:
            d = measured or self.validation_direction(model, tokenizer, seed + 1, result.ledger)
            direction, val_pass_rates, val_zero_variance = d.vector, d.pass_rates, d.zero_variance
            result.validation_zero_variance = int(val_zero_variance.sum())
            result.validation_pass_rate = float(np.nanmean(val_pass_rates)) if len(val_pass_rates) else float("nan")
            result.timings["validation_rollouts"] = d.seconds if measured is None else 0.0
            if direction is None:
                direction, fallback = self._no_direction(len(self.validation))
                result.fallback = fallback
                if direction is None:  # fallback "random": score nothing this round
                    result.timings["scoring"] = seconds_since(t) - result.timings["validation_rollouts"]
                    return get_method("random")
            self.last_direction = direction
            directions.append(direction)
        t_score = time.perf_counter()
        batch = self.batch(rollouts)
        # "completions": per-completion terms; their methods need no norms unless they say so (one-pass skips G_i)
        per_completion = "completions" in self.method.needs
        with_norms = not per_completion or "norms" in self.method.needs
        tokens_read = self.backend.tokens_read(model, rollouts, with_norms)
        result.ledger.pass_through("scoring", tokens_read)
        if "self" in self.method.needs:  # the chunk's own pooled gradient: one more pass
            result.ledger.pass_through("scoring", self.backend.tokens_read(model, rollouts))
            directions.append(unit(self.backend.pooled_gradient(model, batch, self.group),
                                   shard_group(self.group, model)))
        stacked = torch.stack(directions) if directions else torch.zeros(0, 0)
        signals = self.backend.problem_signals(model, batch, stacked, self.group, per_completion=per_completion,
                                               with_norms=with_norms)
        cand.norm = signals.norms.numpy()
        col = 0
        if "validation" in self.method.needs:
            cand.dot_val, cand.cos_val = signals.dots[:, 0].numpy(), signals.cosines(0).numpy()
            col = 1
        if per_completion:
            cand.completion_rewards = by_problem(rollouts, rollouts.rewards.numpy())
            cand.completion_dots = by_problem(rollouts, signals.completion_dots[:, 0].numpy())
        if "self" in self.method.needs:
            cand.cos_self = signals.cosines(col).numpy()
        result.timings["scoring"] = seconds_since(t_score)
        log.info("%sscoring: %d completions, %d tokens read, %.1f s", self.progress, rollouts.group.numel(),
                 tokens_read, result.timings["scoring"])
        return self.method

    def _no_direction(self, n_validation: int) -> tuple[torch.Tensor | None, str]:
        choice = self.cfg.no_direction
        choice = self.auto_no_direction if choice == "auto" else choice
        what = (f"validation set: all {n_validation} groups are zero-variance under the current policy, "
                f"so the validation gradient is zero and defines no direction")
        if choice == "previous" and self.last_direction is not None:
            log.warning("%s; reusing the previous round's direction (no_direction: %s)", what, self.cfg.no_direction)
            return self.last_direction, "previous"
        if choice in ("random", "previous"):  # previous, before any round had a direction: uniform
            log.warning("%s; selecting uniformly this round (no_direction: %s)", what, self.cfg.no_direction)
            return None, "random"
        raise NoDirectionError(f"{what} (set no_direction: random or previous to continue, or use a validation "
                               f"set the policy sometimes solves and sometimes fails)")
