"""The token-mean policy-gradient surrogate of a rollout group (METHODS.md, notation).

For the completions S of one problem,  L(S; θ) = -(1/N_S) Σ_j Σ_t A_j ρ_jt(θ) m_jt  with ρ = π_θ / π_old.
On-policy ρ = exp(logp - logp.detach()) = 1, so ∇L = -(1/N_S) Σ_j A_j Σ_t m_jt ∇ log π_θ(y_jt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..policy.rollouts import Rollouts


@dataclass
class SurrogateBatch:
    """Rollouts plus the per-completion advantages their surrogate uses."""

    rollouts: Rollouts
    advantages: torch.Tensor  # [N]

    @property
    def num_problems(self) -> int:
        return self.rollouts.num_problems

    def tokens_per_problem(self) -> torch.Tensor:
        """N_i: completion tokens of each problem's group (the token-mean denominator)."""
        r = self.rollouts
        return torch.zeros(r.num_problems).index_add_(0, r.group, r.completion_mask.sum(1).float())

    def rows_of(self, problem: int) -> torch.Tensor:
        return (self.rollouts.group == problem).nonzero().squeeze(1)

    def rows_by_problem(self) -> list[torch.Tensor]:
        """Row indices of every problem's completions (ascending), in one pass instead of one scan per problem."""
        group = self.rollouts.group
        counts = torch.bincount(group, minlength=self.num_problems).tolist()
        return list(torch.argsort(group, stable=True).split(counts))

    def live_problems(self) -> list[int]:
        """Problems whose advantages are not all zero; the others have g(x) = 0 exactly and need no backward."""
        signal = torch.zeros(self.num_problems, dtype=torch.float64).index_add_(
            0, self.rollouts.group, self.advantages.abs().double())
        return (signal > 0).nonzero().squeeze(1).tolist()


def completion_logps(model, rollouts: Rollouts, rows: torch.Tensor) -> torch.Tensor:
    """log π_θ of every completion token of the given rows, [len(rows), C] (zero where masked)."""
    device = next(model.parameters()).device
    p_ids, p_mask = rollouts.prompt_ids[rows], rollouts.prompt_mask[rows]
    c_ids, c_mask = rollouts.completion_ids[rows], rollouts.completion_mask[rows]
    input_ids = torch.cat([p_ids, c_ids], 1).to(device)
    attention = torch.cat([p_mask, c_mask], 1).to(device)
    # Positions count real tokens only, so left padding does not shift them (as `generate` does).
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids).logits
    c = c_ids.shape[1]
    logits = logits[:, -c - 1:-1]  # the logits that predict each completion token
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logps = logits.log_softmax(-1).gather(-1, c_ids.to(device).unsqueeze(-1)).squeeze(-1)
    return logps * c_mask.to(device)


def weighted_surrogate(model, batch: SurrogateBatch, weights: torch.Tensor, rows: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Σ_i w_i L_i over the problems i present in `rows` (all rows by default).

    Its gradient is Σ_i w_i g(x_i): with w_i = N_i / Σ N the pooled token-mean gradient of all completions,
    with w_i = 1 for a single problem its own g(x_i).
    """
    r = batch.rollouts
    if rows is None:
        rows = torch.arange(r.group.numel())
    logps = completion_logps(model, r, rows)
    device = logps.device
    mask = r.completion_mask[rows].to(device).float()
    ratio = torch.exp(logps - logps.detach())  # = 1 on-policy, but carries ∇ log π
    group = r.group[rows]
    per_token = weights.to(device)[group] / batch.tokens_per_problem().to(device)[group].clamp(min=1)
    coef = (batch.advantages[rows].to(device) * per_token).unsqueeze(1)
    return -(coef * ratio * mask).sum()
