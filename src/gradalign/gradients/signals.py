"""Per-problem policy-gradient signals: the one small interface every scorer sits behind.

A backend answers two questions about the problems of a `SurrogateBatch`:
  * `combined_gradient(weights)`: the flat vector Σ_i w_i g(x_i) (validation / pool directions);
  * `problem_signals(directions)`: ‖g(x_i)‖ and ⟨g(x_i), d⟩ for a few fixed directions d.
Cosines follow from those two. `NaiveGradients` is the reference: one full gradient per problem, as the
reference GradAlign code computes it. Faster backends must reproduce its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import SINGLE, ProcessGroup
from .surrogate import SurrogateBatch, weighted_surrogate

EPS = 1e-5  # the reference code's ε in ĝ_V = g_V / (‖g_V‖ + ε) and s = ⟨g, ĝ_V⟩ / (‖g‖ + ε)


@dataclass
class ProblemSignals:
    norms: torch.Tensor  # [n] ‖g(x_i)‖
    dots: torch.Tensor  # [n, D] ⟨g(x_i), d_k⟩

    def cosines(self, k: int = 0) -> torch.Tensor:
        """⟨g, d_k⟩ / (‖g‖ + ε): the cosine when d_k is unit-normalised."""
        return self.dots[:, k] / (self.norms + EPS)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """fp32, or fp64 for fp64 models (tests use those as an exact oracle)."""
    t = t.detach()
    return t if t.dtype == torch.float64 else t.float()


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Concatenate .grad of `params` (zeros where a parameter got no gradient), fp32 (fp64 for fp64 models)."""
    return torch.cat([
        _as_float(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
    ])


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm() + EPS)


class GradientBackend:
    """Base: the combined gradient is one (micro-batched) backward of the weighted surrogate."""

    def __init__(self, micro_batch: int = 256):
        self.micro_batch = micro_batch  # completions per forward/backward

    def combined_gradient(self, model, batch: SurrogateBatch, weights: torch.Tensor) -> torch.Tensor:
        params = trainable(model)
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            for rows in torch.arange(batch.rollouts.group.numel()).split(self.micro_batch):
                weighted_surrogate(model, batch, weights, rows).backward()
            return flat_grad(params)
        finally:
            for p, g in zip(params, saved):
                p.grad = g

    def pooled_gradient(self, model, batch: SurrogateBatch, group: ProcessGroup = SINGLE) -> torch.Tensor:
        """Gradient of the token-mean surrogate over all completions of the batch (reference g_V).

        Sharded: each rank holds some of the problems; token counts and gradients are summed over ranks.
        """
        n_tok = batch.tokens_per_problem()
        total = group.sum(n_tok.sum().double()).clamp(min=1)
        return group.sum(self.combined_gradient(model, batch, (n_tok / total).float()))

    def mean_unit_gradient(self, model, batch: SurrogateBatch, group: ProcessGroup = SINGLE) -> torch.Tensor:
        """Mean of the unit per-problem gradients (zero-gradient problems left out): Σ_i g_i / (n ‖g_i‖)."""
        norms = self.problem_signals(model, batch, torch.zeros(0, 0)).norms
        live = norms > EPS
        n_live = group.sum(live.sum().double()).clamp(min=1)
        weights = torch.where(live, 1.0 / (norms.clamp(min=EPS) * n_live), torch.zeros_like(norms)).float()
        return group.sum(self.combined_gradient(model, batch, weights))

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor) -> ProblemSignals:
        """‖g(x_i)‖ and ⟨g(x_i), d_k⟩ for each problem i and each row d_k of `directions` ([D, P], D may be 0)."""
        raise NotImplementedError


class NaiveGradients(GradientBackend):
    """The reference: a full fp32 gradient of every problem, one problem at a time."""

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor) -> ProblemSignals:
        params = trainable(model)
        saved = [p.grad for p in params]
        n, n_dir = batch.num_problems, directions.shape[0]
        norms, dots = torch.zeros(n, dtype=torch.float64), torch.zeros(n, n_dir, dtype=torch.float64)
        ones = torch.ones(n)
        rows_by_problem = batch.rows_by_problem()
        try:
            for i in batch.live_problems():  # zero-variance groups have g(x) = 0 exactly: no backward
                for p in params:
                    p.grad = None
                weighted_surrogate(model, batch, ones, rows_by_problem[i]).backward()
                g = flat_grad(params).double()  # fp32 sums over ~10^6 terms drift by ~1e-4: sum in fp64
                norms[i] = g.norm()
                if n_dir:
                    dots[i] = directions.double() @ g
        finally:
            for p, g in zip(params, saved):
                p.grad = g
        return ProblemSignals(norms=norms.float(), dots=dots.float())

