"""CROPI's off-policy signals (METHODS.md §3): rollouts sampled once from the behaviour policy β and reused at
every stage (the run's two stores, pool and validation, opened here from its config); POPI gradients at the current
policy θ, projected; one reference direction per validation set.

POPI of a problem: ∇_θ (1/K) Σ_k (1/|τ_k|) Σ_t [π_θ(y_kt) / β(y_kt)] Â_k, Â = (R - mean) / (std + 1e-4), no clipping,
no KL: the surrogate's sequence-mean aggregation with a per-token importance ratio. β(y_t) is the log-prob the
token was *sampled* with, stored at collection time: the tempered distribution, with top-p 1. π_θ is evaluated
at the same temperature, so the ratio is exactly 1 at θ = β and stage 0 is the ordinary GRPO gradient. (The
reference code recomputes β untempered while sampling at temperature 0.5, so its ratio is not 1 even at θ = β.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import fileio
from ..config import RunConfig
from ..distributed import SINGLE, ProcessGroup
from ..data.problem import DataError, Problem
from ..gradients.projections import configured_projector, gradient_energy
from ..gradients.signals import GradientBackend
from ..gradients.surrogate import SurrogateBatch
from ..policy.rollout_store import RolloutStore, collect_rollouts, rollout_meta
from ..policy.rollouts import Rollouts, SamplingConfig, sample_rollouts
from ..selection import Candidates, get_method
from ..selection.fusion import reciprocal_rank_fusion

log = logging.getLogger(__name__)


def offline_influence(cfg: RunConfig, model, tokenizer, pool: list[Problem], validation: list[Problem], reward,
                      collect: bool, group: ProcessGroup = SINGLE) -> "OfflineInfluence":
    """CROPI's state for a run or a one-shot selection: the two stores (sampled from `model` when `collect`).

    Several processes: the stores are collected together (`collect_store`); afterwards each rank reads the
    rollouts of the pool problems it owns, and every rank computes the (small) validation directions itself."""
    pool_store, validation_store = open_stores(cfg, model, tokenizer, pool, validation, reward, collect, group)
    return OfflineInfluence(cfg, pool_store, validation_store, validation, tokenizer.pad_token_id, group.is_main)


# ── CROPI's two stores from a run config ────────────────────────────────────────────────────────────────────
def offline_sampling(cfg: RunConfig) -> SamplingConfig:
    return SamplingConfig(temperature=cfg.offline_temperature, top_p=1.0,
                          max_new_tokens=cfg.grpo.max_completion_length)


def store_paths(cfg: RunConfig) -> tuple[Path, Path]:
    out = Path(cfg.output_dir) / "offline"
    return (Path(cfg.offline_rollouts or out / "pool"), Path(cfg.offline_validation or out / "validation"))


def store_meta(cfg: RunConfig, model, k: int) -> dict:
    """What defines an offline store made from `model` with this config (checked when it is reopened; `model`
    None leaves out the weights' hash)."""
    return rollout_meta(cfg.model_args.model_name_or_path, model, k, offline_sampling(cfg), cfg.seed, cfg.verifier)


def collect_store(cfg: RunConfig, path: Path, model, tokenizer, problems: list[Problem], k: int, reward,
                  shard_size: int = 256, group: ProcessGroup = SINGLE) -> RolloutStore:
    """Open (or create) the store at `path` and sample, from `model` (= β), every problem it still lacks.
    Several processes: rank 0 creates and writes the store, every rank samples its share of the shards."""
    meta = store_meta(cfg, model, k)
    store = RolloutStore.open_or_create(path, meta) if group.is_main else None
    group.barrier()
    store = store or RolloutStore.open(path, expect=meta)
    return collect_rollouts(store, model, tokenizer, problems, reward, offline_sampling(cfg), cfg.seed,
                            shard_size=shard_size, desc=f"offline rollouts ({Path(path).name})", group=group)


def open_stores(cfg: RunConfig, model, tokenizer, pool: list[Problem], validation: list[Problem], reward,
                collect: bool, group: ProcessGroup = SINGLE) -> tuple[RolloutStore, RolloutStore]:
    """The pool's and the validation set's stores; `collect` samples what is missing from `model` (= β)."""
    stores = []
    for path, problems, k in zip(store_paths(cfg), (pool, validation),
                                 (cfg.rollouts_per_problem, cfg.offline_validation_rollouts)):
        if collect:
            store = collect_store(cfg, path, model, tokenizer, problems, k, reward, group=group)
        else:  # resuming after stage 0: the policy is no longer β, so its hash is neither computed nor checked
            store = RolloutStore.open(path, expect=store_meta(cfg, None, k))
            missing = next((p.id for p in problems if p.id not in store.done_ids()), None)
            if missing is not None:
                raise DataError(f"{path}: the offline rollout store has no rollouts for problem '{missing}'")
        stores.append(store)
    return stores[0], stores[1]


def popi_batch(rollouts: Rollouts) -> SurrogateBatch:
    return SurrogateBatch(rollouts, rollouts.advantages("group", eps=1e-4), aggregation="sequence-mean",
                          behaviour_logps=rollouts.sample_logps, temperature=rollouts.temperature)


def on_policy_batch(rollouts: Rollouts) -> SurrogateBatch:
    return SurrogateBatch(rollouts, rollouts.advantages("group", eps=1e-4), aggregation="sequence-mean",
                          temperature=rollouts.temperature)


def projected(model, projector, batch: SurrogateBatch, live: np.ndarray, micro_batch: int) -> torch.Tensor:
    """φ of every problem of the batch, [n, d]; rows of problems not in `live` stay 0 (no backward for them)."""
    out = torch.zeros(batch.num_problems, projector.dim)
    idx = np.flatnonzero(live)
    if len(idx):
        out[torch.as_tensor(idx)] = projector.features(model, batch.subset(idx), micro_batch).float().cpu()
    return out


def cosines(phi: torch.Tensor, directions: torch.Tensor) -> np.ndarray:
    """cos(φ(x), φ_v) [n, V]; 0 for zero rows."""
    unit = phi / phi.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (unit @ (directions / directions.norm(dim=1, keepdim=True)).T).double().numpy()


@dataclass
class Directions:
    names: list[str]  # validation set (source) of each row
    vectors: torch.Tensor  # [V, d] mean projected gradient of each set
    tokens: int = 0  # prompt and completion tokens the sets' backward passes read (the cost ledger)


class OfflineInfluence:
    """Everything CROPI needs across stages: the two stores, the validation sets, one fixed projection."""

    def __init__(self, cfg: RunConfig, pool: RolloutStore, validation_store: RolloutStore,
                 validation: list[Problem], pad_id: int, writes: bool = True):
        self.cfg, self.pool, self.validation_store, self.pad_id = cfg, pool, validation_store, pad_id
        self.writes = writes  # rank 0 keeps the projection's energy split in the run directory
        self.sets = self.validation_sets(validation, cfg.validation_per_set)
        self._projector = None

    @staticmethod
    def validation_sets(validation: list[Problem], per_set: int) -> dict[str, list[str]]:
        """One set per source (target task): its first `per_set` problems in file order."""
        sets: dict[str, list[str]] = {}
        for p in validation:
            if len(sets.setdefault(p.source, [])) < per_set:
                sets[p.source].append(p.id)
        return sets

    def load(self, ids: list[str]) -> Rollouts:
        return self.pool.load(ids, pad_id=self.pad_id)

    def projector(self, model):
        """One projection for train, validation and every stage: seeded by (seed, parameter names); an energy
        split is measured once, on the validation rollouts, and kept in the run directory."""
        if self._projector is not None:
            return self._projector
        name = self.cfg.projection_for(get_method(self.cfg.method).projection)

        def measure_energy():  # once per run directory
            path = Path(self.cfg.output_dir) / "offline" / "projection.json"
            if path.exists():
                return fileio.read_json(path)["shares"]
            shares = gradient_energy(model, popi_batch(self.validation_store.load(pad_id=self.pad_id)),
                                     self.cfg.micro_batch)
            if self.writes:
                fileio.write_json(path, {"projection": name, "shares": shares})
            return shares

        self._projector = configured_projector(name, self.cfg.projection_dim, self.cfg.seed, measure_energy)
        return self._projector

    def directions(self, model, batch_of=popi_batch, rollouts_of=None) -> Directions | None:
        """φ_v = mean projected gradient of each set's problems (sets whose groups all agree are dropped). R is
        linear, so that is R applied to the set's mean gradient: one training-style backward over its live
        problems and one projected vector, instead of a projected gradient per problem."""
        names, vectors, tokens = [], [], 0
        backend = GradientBackend(micro_batch=self.cfg.micro_batch)
        for name, ids in self.sets.items():
            rollouts = rollouts_of(ids) if rollouts_of else self.validation_store.load(ids, pad_id=self.pad_id)
            live = np.flatnonzero(~rollouts.zero_variance())
            mean = None
            if len(live):  # zero-variance problems have a zero gradient: they count in the mean, not in the pass
                tokens += rollouts.select_problems(live).tokens
                mean = backend.combined_gradient(model, batch_of(rollouts).subset(live),
                                                 torch.full((len(live),), 1.0 / rollouts.num_problems))
            if mean is None or not mean.abs().sum() > 0:
                log.warning("validation set '%s': every group is zero-variance; it gives no direction", name)
                continue
            names.append(name)
            vectors.append(self.projector(model).project_flat(model, mean).float().cpu())
        return Directions(names, torch.stack(vectors), tokens) if vectors else None

    def signals(self, model, rollouts: Rollouts, cand: Candidates, directions: Directions) -> torch.Tensor:
        """Fill cand.cos_sets from the off-policy gradients at `model`; returns φ (for the fidelity check)."""
        phi = projected(model, self.projector(model), popi_batch(rollouts), ~cand.zero_variance, self.cfg.micro_batch)
        cand.cos_sets = cosines(phi, directions.vectors)
        return phi

    def fidelity(self, model, tokenizer, chunk: list[Problem], validation: list[Problem], reward, phi_off,
                 selected_off: np.ndarray, keep: int, seed: int) -> dict:
        """Off- vs on-policy at the current θ: per-problem cosine of the projected gradients and the overlap of
        the two CROPI selections (fresh on-policy rollouts of the chunk and of the validation sets)."""
        sampling = offline_sampling(self.cfg)
        fresh = sample_rollouts(model, tokenizer, chunk, self.cfg.rollouts_per_problem, reward, sampling, seed,
                                desc="on-policy check")
        live_on = ~fresh.zero_variance()
        phi_on = projected(model, self.projector(model), on_policy_batch(fresh), live_on, self.cfg.micro_batch)
        by_id = {p.id: p for p in validation}
        val = sample_rollouts(model, tokenizer, [by_id[i] for ids in self.sets.values() for i in ids],
                              self.cfg.offline_validation_rollouts, reward, sampling, seed + 1, desc="on-policy check")
        row = {pid: i for i, pid in enumerate(val.problem_ids)}
        directions_on = self.directions(model, on_policy_batch, lambda ids: val.select_problems([row[i] for i in ids]))
        both = (phi_off.abs().sum(1) > 0).numpy() & live_on
        cos = (torch.nn.functional.cosine_similarity(phi_off[both], phi_on[both], dim=1).double().numpy()
               if both.any() else np.zeros(0))
        out = {"problems": int(both.sum()), "cosine_mean": float(cos.mean()) if len(cos) else None,
               "cosine_median": float(np.median(cos)) if len(cos) else None,
               "share_cosine_above_0.6": float((cos > 0.6).mean()) if len(cos) else None, "selection_overlap": None}
        if directions_on is not None and live_on.any():
            cos_on = cosines(phi_on, directions_on.vectors)
            fused = reciprocal_rank_fusion([cos_on[:, v] for v in range(cos_on.shape[1])], live_on, top=keep)
            order = np.flatnonzero(live_on)[np.argsort(-fused[live_on], kind="stable")][:keep]
            out["selection_overlap"] = len(set(order.tolist()) & set(selected_off.tolist())) / max(keep, 1)
        return out
