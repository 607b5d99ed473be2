"""The policy-gradient surrogate of a rollout group (METHODS.md, notation), on- and off-policy.

For the completions S of one problem,  L(S; θ) = -Σ_j Σ_t ν_jt [c_jt ρ_jt(θ)] m_jt  with ρ = exp(log π_θ - sg(log π_θ))
(= 1, but it carries ∇ log π), ν the aggregation weight and c_jt the detached per-token coefficient of ∇ log π:

    on-policy (GradAlign, LearnAlign)   c = A_j
    off-policy (CROPI's POPI)           c = A_j · π_θ(y_jt) / β(y_jt)        (∇ of A ρ_β is A ρ_β ∇ log π)
    with a KL penalty β_KL (LearnAlign) c -= β_KL (1 - π_ref / π_θ)          (∇ of TRL's k3 estimator
                                                                              e^{ref-lp} - (ref-lp) - 1)
Aggregation: "token-mean" ν = 1/N_S (DAPO, the reference GradAlign scoring) or "sequence-mean"
ν = 1/(K |τ_j|) (standard GRPO, CROPI's POPI: token mean per completion, mean over completions).
Every backend (naive, one-pass, projections) differentiates this one function, so all of them agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..policy.rollouts import Rollouts

AGGREGATIONS = ("token-mean", "sequence-mean")


@dataclass
class SurrogateBatch:
    """Rollouts, the per-completion advantages their surrogate uses, and the optional per-token terms."""

    rollouts: Rollouts
    advantages: torch.Tensor  # [N]
    aggregation: str = "token-mean"
    behaviour_logps: torch.Tensor | None = None  # [N, C] log β(y_t): importance ratio π_θ / β per token (off-policy)
    reference_logps: torch.Tensor | None = None  # [N, C] log π_ref(y_t) for the KL term
    kl_beta: float = 0.0
    temperature: float = 1.0  # log π_θ from logits / temperature (as TRL computes them; 1 = the raw policy)

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation '{self.aggregation}' (choose from: {', '.join(AGGREGATIONS)})")
        if self.kl_beta and self.reference_logps is None:
            raise ValueError("a KL term (kl_beta > 0) needs reference_logps")

    @property
    def num_problems(self) -> int:
        return self.rollouts.num_problems

    @property
    def on_policy(self) -> bool:
        """True when c = A_j: no importance ratio and no KL term."""
        return self.behaviour_logps is None and not self.kl_beta

    def tokens_per_problem(self) -> torch.Tensor:
        """N_i: completion tokens of each problem's group (the token-mean denominator)."""
        r = self.rollouts
        return torch.zeros(r.num_problems).index_add_(0, r.group, r.completion_mask.sum(1).float())

    def row_norm(self, rows: torch.Tensor) -> torch.Tensor:
        """ν per row: 1/N_i (token-mean) or 1/(K_i |τ_j|) (sequence-mean), [len(rows)]."""
        r = self.rollouts
        group = r.group[rows]
        if self.aggregation == "token-mean":
            return 1.0 / self.tokens_per_problem()[group].clamp(min=1)
        k = torch.bincount(r.group, minlength=r.num_problems).float()[group]
        return 1.0 / (k * r.completion_mask[rows].sum(1).float().clamp(min=1))

    def subset(self, problems) -> "SurrogateBatch":
        """The same surrogate restricted to some problems (their rollouts, advantages and per-token terms)."""
        problems = list(problems)
        keep = self.rollouts.rows_of_problems(problems)
        pick = lambda t: None if t is None else t[keep]  # noqa: E731
        return SurrogateBatch(self.rollouts.select_problems(problems), self.advantages[keep], self.aggregation,
                              pick(self.behaviour_logps), pick(self.reference_logps), self.kl_beta, self.temperature)

    def rows_of(self, problem: int) -> torch.Tensor:
        return (self.rollouts.group == problem).nonzero().squeeze(1)

    def rows_by_problem(self) -> list[torch.Tensor]:
        """Row indices of every problem's completions (ascending), in one pass instead of one scan per problem."""
        group = self.rollouts.group
        counts = torch.bincount(group, minlength=self.num_problems).tolist()
        return list(torch.argsort(group, stable=True).split(counts))

    def live_problems(self) -> list[int]:
        """Problems whose gradient can be non-zero; the others have g(x) = 0 exactly and need no backward.

        Without a KL term these are the problems whose advantages are not all zero (a zero-variance group
        contributes nothing, whatever the ratio); a KL term pulls every completion token toward π_ref.
        """
        if self.kl_beta:
            return [i for i, rows in enumerate(self.rows_by_problem()) if len(rows)]
        signal = torch.zeros(self.num_problems, dtype=torch.float64).index_add_(
            0, self.rollouts.group, self.advantages.abs().double())
        return (signal > 0).nonzero().squeeze(1).tolist()


def completion_logps(model, rollouts: Rollouts, rows: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
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
    return token_logps(logits, c_ids.to(device), c_mask.to(device), temperature)


def token_logps(logits: torch.Tensor, c_ids: torch.Tensor, c_mask: torch.Tensor, temperature: float = 1.0
                ) -> torch.Tensor:
    """log π of each completion token from the logits that predict it, [N, C] (zero where masked); in fp32 (fp64
    for fp64 models) at the given sampling temperature."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.log_softmax(-1).gather(-1, c_ids.unsqueeze(-1)).squeeze(-1) * c_mask


def token_coefficients(batch: SurrogateBatch, rows: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """c_jt of the module docstring for the given rows (detached), from the current log π_θ."""
    device = logps.device
    lp = logps.detach()
    coef = batch.advantages[rows].to(device).to(lp.dtype).unsqueeze(1).expand_as(lp)
    if batch.behaviour_logps is not None:
        coef = coef * torch.exp(lp - batch.behaviour_logps[rows].to(device, lp.dtype))
    if batch.kl_beta:
        coef = coef - batch.kl_beta * (1 - torch.exp(batch.reference_logps[rows].to(device, lp.dtype) - lp))
    return coef


def weighted_surrogate(model, batch: SurrogateBatch, weights: torch.Tensor, rows: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Σ_i w_i L_i over the problems i present in `rows` (all rows by default).

    Its gradient is Σ_i w_i g(x_i): with w_i = N_i / Σ N the pooled token-mean gradient of all completions,
    with w_i = 1 for a single problem its own g(x_i).
    """
    if rows is None:
        rows = torch.arange(batch.rollouts.group.numel())
    return surrogate_of(batch, weights, rows, completion_logps(model, batch.rollouts, rows, batch.temperature))


def surrogate_of(batch: SurrogateBatch, weights: torch.Tensor, rows: torch.Tensor, logps: torch.Tensor
                 ) -> torch.Tensor:
    """`weighted_surrogate` of `rows` from their log π_θ ([len(rows), C], however they were computed)."""
    r = batch.rollouts
    device = logps.device
    mask = r.completion_mask[rows].to(device).to(logps.dtype)
    ratio = torch.exp(logps - logps.detach())  # = 1, but carries ∇ log π
    nu = (weights.to(device)[r.group[rows].to(device)] * batch.row_norm(rows).to(device)).to(logps.dtype)
    coef = token_coefficients(batch, rows, logps) * nu.unsqueeze(1)
    return -(coef * ratio * mask).sum()
