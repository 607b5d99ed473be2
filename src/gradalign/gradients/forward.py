"""Per-completion alignments by forward-mode differentiation, each prompt run once (METHODS.md §4).

The default's scores (gradalign-lfdr, gradalign-z, gradalign-dot) read only ⟨g_j, d⟩ for a fixed direction d,
never a norm. ⟨∇_θ log π(y_jt), d⟩ is the rate at which log π(y_jt) changes as θ moves along d: the tangent of one
forward pass in forward mode (a JVP), for every token of every completion at once, with no backward and no
per-completion gradient. A group's k completions also share their prompt, which is most of a short-answer row's
tokens: the prompt runs once per problem and hands its keys and values (and their tangents) to all k completions
through the model's KV cache. A scoring pass then costs about two forwards of (the prompts once + the completions)
instead of a forward and a backward of k full rows. The validation direction, a backward of one summed surrogate,
shares prompts the same way (autograd sums the completions' gradients into their prompt).

Norms are not directional derivatives: methods that need them (the cosine of the published GradAlign) are scored
by `onepass`. Attention runs eagerly with an explicit mask: PyTorch's fused CPU attention has no forward mode.
"""

from __future__ import annotations

import logging

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call

from ..distributed import SINGLE, ProcessGroup, fsdp_sharded
from .onepass import OnePassGradients
from .persample import _attention, additive_causal_mask
from .signals import GradientBackend, ProblemSignals, refuse_sharded
from .surrogate import SurrogateBatch, surrogate_of, token_coefficients, token_logps

log = logging.getLogger(__name__)


def first_rows(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the rows of some problems (`group`: row -> problem): the position of each problem's first row, whose
    prompt stands for its group's, and each row's problem as an index into those positions."""
    problems, where = torch.unique(group, sorted=True, return_inverse=True)
    first = torch.full((len(problems),), len(group), dtype=torch.long).scatter_reduce(
        0, where, torch.arange(len(group)), reduce="amin")
    return first, where


def completion_mask_4d(prompt_mask: torch.Tensor, completion_mask: torch.Tensor, dtype) -> torch.Tensor:
    """[N, 1, C, P + C] additive mask of completion queries over the cached prompt and the completion so far:
    the real prompt tokens, the real completion tokens up to the query, and the query itself (never a fully
    masked row, which would turn into NaN)."""
    n, c = completion_mask.shape
    prompt = torch.zeros(n, 1, c, prompt_mask.shape[1], dtype=dtype, device=prompt_mask.device)
    prompt.masked_fill_(~prompt_mask.bool()[:, None, None, :], torch.finfo(dtype).min)
    return torch.cat([prompt, additive_causal_mask(completion_mask, dtype)], -1)


def shared_prompt_logps(model, rollouts, rows: torch.Tensor, params: dict | None = None,
                        temperature: float = 1.0) -> torch.Tensor:
    """log π_θ of every completion token of `rows`, [len(rows), C] (zero where masked), as `completion_logps`
    computes them, with each problem's prompt run once and shared through the KV cache. `params` replaces the
    model's parameters by name (torch.func)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    first, where = first_rows(rollouts.group[rows])
    where = where.to(device)
    p_ids, p_mask = rollouts.prompt_ids[rows[first]], rollouts.prompt_mask[rows[first]]
    keep = p_mask.any(0).nonzero()  # drop columns that are padding in every prompt (left padding) ...
    start = int(keep[0]) if len(keep) else p_mask.shape[1] - 1
    p_ids, p_mask = p_ids[:, start:].to(device), p_mask[:, start:].to(device)
    c_ids, c_mask = rollouts.completion_ids[rows].to(device), rollouts.completion_mask[rows].to(device)
    width = c_ids.shape[1]
    c_len = int(c_mask.any(0).nonzero().max()) + 1 if c_mask.any() else 1  # ... and in every completion (right)
    c_ids, c_mask = c_ids[:, :c_len], c_mask[:, :c_len]
    run = lambda **kw: functional_call(model, params or {}, (), kw, strict=False)  # noqa: E731
    prompt = run(input_ids=p_ids, attention_mask=additive_causal_mask(p_mask, dtype),
                 position_ids=(p_mask.cumsum(1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
    cache = prompt.past_key_values
    if cache is None:
        raise ValueError("gradient_backend forward: the model returned no KV cache (gradient checkpointing in train "
                         "mode turns it off; scoring runs in eval mode); use gradient_backend: onepass")
    cache.reorder_cache(where)  # each row gets its problem's prompt keys and values
    p_mask = p_mask[where]
    logits = prompt.logits[where]  # the prompt's last logits predict the first completion token
    if c_len > 1:  # the last completion token predicts nothing: it is not fed
        fed = c_mask[:, :-1]
        rest = run(input_ids=c_ids[:, :-1], attention_mask=completion_mask_4d(p_mask, fed, dtype),
                   position_ids=p_mask.sum(1, keepdim=True) + torch.arange(c_len - 1, device=device),
                   past_key_values=cache, use_cache=True)
        logits = torch.cat([logits, rest.logits], 1)
    return torch.nn.functional.pad(token_logps(logits, c_ids, c_mask, temperature), (0, width - c_len))


def problem_chunks(batch: SurrogateBatch, problems: list[int], max_rows: int) -> list[torch.Tensor]:
    """Row indices of whole problem groups, at most `max_rows` rows a chunk (a larger group is a chunk alone)."""
    rows_of = batch.rows_by_problem()
    chunks, current = [], []
    for i in problems:
        if current and sum(map(len, current)) + len(rows_of[i]) > max_rows:
            chunks.append(torch.cat(current))
            current = []
        current.append(rows_of[i])
    return chunks + ([torch.cat(current)] if current else [])


class ForwardGradients(GradientBackend):
    """Exact per-completion alignments ⟨g_j, d⟩ and per-problem dots by a JVP along each direction, prompts
    shared; no norms (NaN), so only for methods that read dots alone."""

    def tokens_read(self, model, rollouts, norms: bool = False) -> int:
        """Each prompt once and the completions. A forward-mode pass costs about two forwards (two thirds of a
        forward+backward); the ledger counts it as one forward+backward over the tokens it reads."""
        return rollouts.shared_prompt_tokens

    def row_parts(self, batch: SurrogateBatch) -> list[torch.Tensor]:
        return problem_chunks(batch, list(range(batch.num_problems)), self.micro_batch)

    def surrogate(self, model, batch: SurrogateBatch, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        refuse_sharded(model, "forward")
        logps = shared_prompt_logps(model, batch.rollouts, rows, temperature=batch.temperature)
        return surrogate_of(batch, weights, rows, logps)

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor,
                        group: ProcessGroup = SINGLE, per_completion: bool = False,
                        with_norms: bool = True) -> ProblemSignals:
        refuse_sharded(model, "forward")
        if with_norms:
            raise NotImplementedError("gradient_backend 'forward' gives dots, not norms: a method that reads a "
                                      "cosine or a norm is scored with gradient_backend: onepass")
        n, n_dir = batch.num_problems, directions.shape[0]
        rows_dots = torch.zeros(batch.rollouts.group.numel(), n_dir, dtype=torch.float64)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if n_dir and directions.shape[1] != sum(p.numel() for _, p in named):
            raise ValueError(f"directions have {directions.shape[1]} columns, the model has "
                             f"{sum(p.numel() for _, p in named)} trainable values")
        primals = tuple(p.detach() for _, p in named)
        tangents = [torch.split(d.to(primals[0].device), [p.numel() for p in primals]) for d in directions] \
            if named else []
        names = [name for name, _ in named]
        with torch.no_grad(), _attention(model, "eager"):
            for rows in problem_chunks(batch, batch.live_problems(), self.micro_batch) if n_dir else []:
                coef = None
                for k, parts in enumerate(tangents):
                    # dual tensors rather than torch.func.jvp: hooks that set requires_grad on activations (TRL's
                    # and peft's enable_input_require_grads) are refused inside a functorch transform
                    with fwAD.dual_level():
                        duals = {m: fwAD.make_dual(p, t.view_as(p).to(p.dtype))
                                 for m, p, t in zip(names, primals, parts)}
                        lp, rate = fwAD.unpack_dual(
                            shared_prompt_logps(model, batch.rollouts, rows, duals, batch.temperature))
                    rate = torch.zeros_like(lp) if rate is None else rate  # nothing scored reaches these tokens
                    if coef is None:  # ⟨g_j, d⟩ = -ν_j Σ_t c_jt ⟨∇ log π_jt, d⟩ (the surrogate's per-row term)
                        coef = token_coefficients(batch, rows, lp) * batch.row_norm(rows).to(lp).unsqueeze(1)
                    mask = batch.rollouts.completion_mask[rows].to(lp)
                    rows_dots[rows, k] = -(coef * rate * mask).sum(1, dtype=torch.float64).cpu()
        dots = torch.zeros(n, n_dir, dtype=torch.float64).index_add_(0, batch.rollouts.group, rows_dots)
        return ProblemSignals(norms=torch.full((n,), float("nan")), dots=dots.float(),
                              completion_dots=rows_dots.float() if per_completion else None)


class AutoGradients(GradientBackend):
    """The default: `forward` wherever it applies (dots without norms, a whole model on each process), the exact
    one-pass scorer otherwise (cosines, norms, FSDP shards, and models with an operation that has no forward mode,
    e.g. the grouped matmul of some mixture-of-experts layers: said once in the log). Both are exact: only the
    cost differs."""

    def __init__(self, micro_batch: int = 256):
        super().__init__(micro_batch)
        self.forward, self.onepass = ForwardGradients(micro_batch), OnePassGradients(micro_batch)
        self.no_forward_mode: set[int] = set()  # id() of models forward mode failed on

    def _backend(self, model, norms: bool = False) -> GradientBackend:
        """forward unless the pass needs norms, the model is sharded, or forward mode already failed on it."""
        if norms or fsdp_sharded(model) or id(model) in self.no_forward_mode:
            return self.onepass
        return self.forward

    def tokens_read(self, model, rollouts, norms: bool = False) -> int:
        return self._backend(model, norms).tokens_read(model, rollouts, norms)

    def combined_gradient(self, model, batch: SurrogateBatch, weights: torch.Tensor,
                          group: ProcessGroup = SINGLE) -> torch.Tensor:
        return self._backend(model).combined_gradient(model, batch, weights, group)

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor,
                        group: ProcessGroup = SINGLE, per_completion: bool = False,
                        with_norms: bool = True) -> ProblemSignals:
        backend = self._backend(model, with_norms)
        try:
            return backend.problem_signals(model, batch, directions, group, per_completion, with_norms)
        except NotImplementedError as e:
            if backend is not self.forward or "forward AD" not in str(e):
                raise
            self.no_forward_mode.add(id(model))
            log.warning("gradient_backend auto: this model has an operation without forward-mode "
                        "differentiation (%s); scoring it with onepass", str(e).split(" that ")[0])
            return self.onepass.problem_signals(model, batch, directions, group, per_completion, with_norms)
