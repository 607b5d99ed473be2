"""Per-problem policy-gradient signals: the one small interface every scorer sits behind.

A backend answers two questions about the problems of a `SurrogateBatch`:
  * `combined_gradient(weights)`: the flat vector Σ_i w_i g(x_i) (validation / pool directions);
  * `problem_signals(directions)`: ‖g(x_i)‖ and ⟨g(x_i), d⟩ for a few fixed directions d; with
    `per_completion=True` also each completion's own term ⟨g_j, d⟩ of the problem's dot (g(x_i) = Σ_{j∈i} g_j,
    g_j the gradient of completion j's part of the surrogate), from the same backward.
Cosines follow from those two. `NaiveGradients` is the reference: one full gradient per problem, as the
reference GradAlign code computes it. Faster backends must reproduce its numbers.

A flat gradient or direction lists the trainable parameters in `model.parameters()` order. When FSDP shards the
model (its parameters are DTensors), it holds only this rank's shard of each parameter: a model-sized vector
is never formed on one rank, norms are summed over ranks, and a parameter's full direction is gathered only
while that parameter is being scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from ..distributed import SINGLE, ProcessGroup, fsdp_sharded, reshard, shard_group
from .surrogate import SurrogateBatch, weighted_surrogate

EPS = 1e-5  # the reference code's ε in ĝ_V = g_V / (‖g_V‖ + ε) and s = ⟨g, ĝ_V⟩ / (‖g‖ + ε)


@dataclass
class ProblemSignals:
    norms: torch.Tensor  # [n] ‖g(x_i)‖
    dots: torch.Tensor  # [n, D] ⟨g(x_i), d_k⟩
    completion_dots: torch.Tensor | None = None  # [N, D] ⟨g_j, d_k⟩ per completion row (batch row order); Σ_j∈i = dots[i]

    def cosines(self, k: int = 0) -> torch.Tensor:
        """⟨g, d_k⟩ / (‖g‖ + ε): the cosine when d_k is unit-normalised."""
        return self.dots[:, k] / (self.norms + EPS)


def trainable(model) -> list[torch.nn.Parameter]:
    """The parameters gradients are taken for, as the model registers them (FSDP: this rank's shards)."""
    reshard(model)
    return [p for p in model.parameters() if p.requires_grad]


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """fp32, or fp64 for fp64 models (tests use those as an exact oracle)."""
    t = t.detach()
    return t if t.dtype == torch.float64 else t.float()


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP-sharded tensor (a DTensor); any other tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Concatenate .grad of `params` (zeros where a parameter got no gradient), fp32 (fp64 for fp64 models);
    this rank's shards only, for FSDP-sharded parameters."""
    return torch.cat([
        _as_float(local_part(p.grad) if p.grad is not None else torch.zeros_like(local_part(p))).reshape(-1)
        for p in params
    ])


def parameter_views(params: list[torch.nn.Parameter], flat: torch.Tensor) -> list[torch.Tensor]:
    """Each parameter's part of flat vectors [K, P] (P counts this rank's shards), shaped [K, *local shape]."""
    views, offset = [], 0
    for p in params:
        local = local_part(p)
        views.append(flat[:, offset:offset + local.numel()].reshape(-1, *local.shape))
        offset += local.numel()
    return views


def full_parameter(view: torch.Tensor, p: torch.nn.Parameter) -> torch.Tensor:
    """[K, *p.shape] from this rank's [K, *local shape] part: gathered from every rank when FSDP shards `p`."""
    if not isinstance(p, DTensor):
        return view
    return torch.stack([DTensor.from_local(v.contiguous(), p.device_mesh, p.placements, shape=p.shape,
                                           stride=p.stride()).full_tensor() for v in view])


def unit(v: torch.Tensor, shards: ProcessGroup = SINGLE) -> torch.Tensor:
    """v / (‖v‖ + ε); `shards` is the group a sharded model's flat vectors are split over (each holds a part)."""
    return v / (shards.sum(v.double().pow(2).sum()).sqrt().to(v.dtype) + EPS)


class GradientBackend:
    """Base: the combined gradient is one (micro-batched) backward of the weighted surrogate."""

    def __init__(self, micro_batch: int = 256):
        self.micro_batch = micro_batch  # completions per forward/backward

    def combined_gradient(self, model, batch: SurrogateBatch, weights: torch.Tensor,
                          group: ProcessGroup = SINGLE) -> torch.Tensor:
        """Σ_i w_i g(x_i) over the problems of every rank's batch, summed in fp32 (bf16 models included)."""
        params = trainable(model)
        shards = shard_group(group, model)
        saved = [p.grad for p in params]
        parts = self.row_parts(batch)
        total = None
        try:
            for i in range(shards.max(len(parts))):  # FSDP: every rank makes as many passes, padding with zero weight
                for p in params:
                    p.grad = None
                rows, w = (parts[i], weights) if i < len(parts) else (parts[0][:1], torch.zeros_like(weights))
                self.surrogate(model, batch, w, rows).backward()
                g = flat_grad(params)  # FSDP: already reduced over ranks, as the mean of their gradients
                total = g if total is None else total + g
            return total * shards.world_size if shards.sharded else group.sum(total)
        finally:
            for p, g in zip(params, saved):
                p.grad = g

    def tokens_read(self, model, rollouts, norms: bool = False) -> int:
        """Tokens one pass of this backend over `rollouts` reads (a `problem_signals` call forming norms, or not; a
        `combined_gradient`): the cost ledger's unit."""
        return rollouts.tokens

    def row_parts(self, batch: SurrogateBatch) -> list[torch.Tensor]:
        """The rows of each forward/backward of `combined_gradient`."""
        return list(torch.arange(batch.rollouts.group.numel()).split(self.micro_batch))

    def surrogate(self, model, batch: SurrogateBatch, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The weighted surrogate of `rows` that `combined_gradient` differentiates."""
        return weighted_surrogate(model, batch, weights, rows)

    def pooled_gradient(self, model, batch: SurrogateBatch, group: ProcessGroup = SINGLE) -> torch.Tensor:
        """Gradient of the token-mean surrogate over all completions of the batch (reference g_V).

        Sharded: each rank holds some of the problems; token counts and gradients are summed over ranks.
        """
        n_tok = batch.tokens_per_problem()
        total = group.sum(n_tok.sum().double()).clamp(min=1)
        return self.combined_gradient(model, batch, (n_tok / total).float(), group)

    def mean_unit_gradient(self, model, batch: SurrogateBatch, group: ProcessGroup = SINGLE) -> torch.Tensor:
        """Mean of the unit per-problem gradients (zero-gradient problems left out): Σ_i g_i / (n ‖g_i‖)."""
        norms = self.problem_signals(model, batch, torch.zeros(0, 0), group).norms
        live = norms > EPS
        n_live = group.sum(live.sum().double()).clamp(min=1)
        weights = torch.where(live, 1.0 / (norms.clamp(min=EPS) * n_live), torch.zeros_like(norms)).float()
        return self.combined_gradient(model, batch, weights, group)

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor,
                        group: ProcessGroup = SINGLE, per_completion: bool = False,
                        with_norms: bool = True) -> ProblemSignals:
        """‖g(x_i)‖ and ⟨g(x_i), d_k⟩ for each problem i and each row d_k of `directions` ([D, P], D may be 0);
        with `per_completion`, also every completion's term ⟨g_j, d_k⟩ (`ProblemSignals.completion_dots`), and then
        `with_norms=False` lets a backend skip the norms (NaN) where that saves work (one-pass: the per-problem G_i).

        `group` matters only for an FSDP-sharded model, whose forward passes every rank must make together."""
        raise NotImplementedError


def completion_alignment(batch: SurrogateBatch, completion_dots: torch.Tensor) -> torch.Tensor:
    """d_j = ⟨∇ Σ_t m_jt log π(y_jt), d⟩ per completion, [N, D], from its surrogate term ⟨g_j, d⟩ = -ν_j A_j d_j.

    Exact on policy (the coefficient of ∇ log π is the constant -ν_j A_j along a completion); NaN where A_j = 0,
    whose term carries no information about d_j."""
    if not batch.on_policy:
        raise ValueError("completion_alignment needs an on-policy surrogate (no importance ratio, no KL term)")
    rows = torch.arange(batch.rollouts.group.numel())
    coef = -(batch.advantages.double() * batch.row_norm(rows).double())
    d = completion_dots.double() / coef.unsqueeze(1)
    return torch.where((coef != 0).unsqueeze(1), d, torch.full_like(d, float("nan")))


def refuse_sharded(model, backend: str) -> None:
    """Backends that read whole per-problem gradients cannot run on FSDP shards: say so in one line."""
    if fsdp_sharded(model):
        raise NotImplementedError(f"gradient_backend '{backend}' needs whole parameters; an FSDP-sharded model "
                                  f"is scored with gradient_backend: onepass")


class NaiveGradients(GradientBackend):
    """The reference: a full fp32 gradient of every problem, one problem at a time."""

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor,
                        group: ProcessGroup = SINGLE, per_completion: bool = False,
                        with_norms: bool = True) -> ProblemSignals:
        refuse_sharded(model, "naive")
        params = trainable(model)
        saved = [p.grad for p in params]
        n, n_dir = batch.num_problems, directions.shape[0]
        norms, dots = torch.zeros(n, dtype=torch.float64), torch.zeros(n, n_dir, dtype=torch.float64)
        rows_dots = torch.zeros(batch.rollouts.group.numel(), n_dir, dtype=torch.float64)
        ones = torch.ones(n)
        rows_by_problem = batch.rows_by_problem()
        try:
            for i in batch.live_problems():  # zero-variance groups have g(x) = 0 exactly: no backward
                # per completion: one backward per row, summed to the problem's gradient
                parts = rows_by_problem[i].split(1) if per_completion else [rows_by_problem[i]]
                g = 0
                for rows in parts:
                    for p in params:
                        p.grad = None
                    weighted_surrogate(model, batch, ones, rows).backward()
                    g_rows = flat_grad(params).double()  # fp32 sums over ~10^6 terms drift by ~1e-4: sum in fp64
                    if per_completion and n_dir:
                        rows_dots[rows] = directions.double() @ g_rows
                    g = g + g_rows
                norms[i] = g.norm()
                if n_dir:
                    dots[i] = directions.double() @ g
        finally:
            for p, g in zip(params, saved):
                p.grad = g
        return ProblemSignals(norms=norms.float(), dots=dots.float(),
                              completion_dots=rows_dots.float() if per_completion else None)

