"""Per-problem gradient signals with `torch.func`: vmap of a functional per-problem gradient.

`FuncGradients.problem_signals` computes, for a chunk of c problems at once,

    vmap(grad(L_i))(θ)  ->  {name: [c, *param.shape]}       (one full gradient per problem, batched)

where L_i is problem i's token-mean surrogate evaluated with `torch.func.functional_call` on a [k_max, L]
batch holding that problem's completions. Then ‖g_i‖ and ⟨g_i, d⟩ are reduced parameter by parameter and
the per-problem gradients are dropped before the next chunk. The numbers equal `NaiveGradients`' (same
surrogate, same fp32 gradient, only the summation order differs).

What had to change for HF Qwen2 (transformers 5) to run under vmap, and the limits that remain:
  * The vmapped dimension is *problems*. Inside the vmapped function the model sees an ordinary [k_max, L]
    batch: the completions of one problem. Groups of different sizes are padded to k_max with dummy rows of
    weight 0 and completion mask 0, so they add nothing to the gradient.
  * HF's mask builder branches on tensor values (`padding_mask.all()`), which vmap refuses. We pass a
    ready-made 4-D additive mask (causal ∧ key-padding; pad *queries* attend to themselves so that no row is
    fully masked, which would give NaN): HF returns a 4-D mask as is. This needs the `eager` or `sdpa`
    attention path; any other implementation (flash-attention, flex) is switched to `eager` for the call.
  * SDPA has no vmap batching rule on CPU (PyTorch falls back to a per-sample loop and warns), so by
    default the call runs with `eager` attention (`attention="eager"`; "model" keeps the model's own when it
    is eager or sdpa), and the model's setting is restored afterwards. Eager and SDPA agree to fp32
    rounding; on the tiny model on CPU the two run at about the same speed.
  * Memory: a chunk materialises c full gradients, c·P floats. Chunks are sized so that this stays under
    `grad_memory_mb` (and c·k_max ≤ `micro_batch` completions); at least one problem per chunk.
  * Zero-variance problems (all advantages 0) have g = 0 exactly and are skipped, as `NaiveGradients` does.
  * Gradients are w.r.t. the trainable parameters (`requires_grad`); frozen parameters and buffers are read
    from the module. Tied weights (e.g. embeddings/lm_head) are handled by `functional_call`'s tie_weights.
  * Random operations are refused under vmap (randomness="error"): a model with active dropout (p > 0 in
    train mode) raises; score in eval mode or with dropout 0 (Qwen2's default attention dropout is 0).
    Gradients are otherwise taken in whatever train/eval mode the model is in, as `NaiveGradients` does.
"""

from __future__ import annotations

import contextlib

import torch
from torch.func import functional_call, grad, vmap

from ..distributed import SINGLE, ProcessGroup
from .signals import GradientBackend, ProblemSignals, refuse_sharded
from .surrogate import SurrogateBatch


@contextlib.contextmanager
def _attention(model, implementation: str | None):
    """Temporarily run `model` with another attention implementation (None: leave it alone)."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if implementation is None or config is None or current == implementation:
        yield
        return
    configs = {id(m.config): m.config for m in model.modules() if getattr(m, "config", None) is not None}
    saved = {k: c._attn_implementation_internal for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation_internal = implementation
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation_internal = saved[k]


def additive_causal_mask(attention: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., L] 0/1 padding mask -> [..., 1, L, L] additive mask: 0 where query q may see key j, min elsewhere.

    Allowed: j ≤ q and key j is a real token; also j == q always, so that a padded query row is never
    fully masked (its output is discarded anyway; a fully masked row would turn into NaN).
    """
    length = attention.shape[-1]
    device = attention.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = (causal & attention.bool().unsqueeze(-2)) | torch.eye(length, dtype=torch.bool, device=device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(-3)


class FuncGradients(GradientBackend):
    """Exact per-problem signals via torch.func: `vmap(grad(problem surrogate))` over chunks of problems."""

    def __init__(self, micro_batch: int = 256, grad_memory_mb: float = 256.0, attention: str | None = "eager"):
        super().__init__(micro_batch=micro_batch)
        self.grad_memory_mb = grad_memory_mb
        self.attention = None if attention in (None, "model") else attention

    def problems_per_chunk(self, num_params: int, bytes_per_value: int, k_max: int) -> int:
        by_memory = int(self.grad_memory_mb * 2**20 // max(1, num_params * bytes_per_value))
        by_rows = self.micro_batch // max(1, k_max)
        return max(1, min(by_memory, by_rows))

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor,
                        group: ProcessGroup = SINGLE, per_completion: bool = False,
                        with_norms: bool = True) -> ProblemSignals:
        refuse_sharded(model, "func")
        if per_completion:
            raise NotImplementedError("gradient_backend 'func' gives per-problem signals only; per-completion "
                                      "signals (e.g. method gradalign-z) need onepass or naive")
        if not batch.on_policy or batch.aggregation != "token-mean" or batch.temperature != 1.0:
            raise NotImplementedError("the func backend computes the on-policy token-mean surrogate only; use "
                                      "gradient_backend: onepass (or naive) for off-policy, KL or sequence-mean batches")
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        n, n_dir = batch.num_problems, directions.shape[0]
        norms, dots = torch.zeros(n), torch.zeros(n, n_dir)
        if not named or n == 0:
            return ProblemSignals(norms=norms, dots=dots)
        device = named[0][1].device
        dtype = named[0][1].dtype

        # Direction slices in `trainable(model)` order (= named_parameters order), one [D, numel] view each.
        slices, offset = {}, 0
        for name, p in named:
            if n_dir:
                slices[name] = directions[:, offset:offset + p.numel()].to(device=device, dtype=torch.float32)
            offset += p.numel()
        if n_dir and directions.shape[1] != offset:
            raise ValueError(f"directions have {directions.shape[1]} columns, the model has {offset} trainable values")

        r = batch.rollouts
        n_tok = batch.tokens_per_problem().clamp(min=1)
        live = batch.live_problems()  # zero-variance problems keep g = 0
        if not live:
            return ProblemSignals(norms=norms, dots=dots)
        rows_of = [rows.tolist() for rows in batch.rows_by_problem()]
        k_max = max(len(rows_of[i]) for i in live)

        params = {name: p.detach() for name, p in named}

        def loss(params, input_ids, attn4d, position_ids, c_ids, c_mask, coef):
            c = c_ids.shape[-1]
            out = functional_call(model, params, (), dict(input_ids=input_ids, attention_mask=attn4d,
                                                           position_ids=position_ids, use_cache=False,
                                                           logits_to_keep=c + 1))
            logits = out.logits[:, :-1].float()  # the logits that predict each completion token
            logps = logits.log_softmax(-1).gather(-1, c_ids.unsqueeze(-1)).squeeze(-1)
            # ∇ of -(1/N) Σ_j A_j Σ_t m_jt ρ_jt at ρ = 1 is ∇ of -(1/N) Σ_j A_j Σ_t m_jt log π_jt.
            return -(coef.unsqueeze(1) * logps * c_mask).sum()

        per_problem_grads = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0, 0, 0))
        num_params = offset
        step = self.problems_per_chunk(num_params, torch.finfo(dtype).bits // 8, k_max)

        current = getattr(getattr(model, "config", None), "_attn_implementation", None)
        implementation = self.attention or (current if current in ("eager", "sdpa") else "eager")
        with _attention(model, implementation):
            for start in range(0, len(live), step):
                chunk = live[start:start + step]
                # [c, k_max] row indices; padded slots repeat the group's first row with weight 0, mask 0.
                index = torch.tensor([rows_of[i] + [rows_of[i][0]] * (k_max - len(rows_of[i])) for i in chunk])
                real = torch.tensor([[1.0] * len(rows_of[i]) + [0.0] * (k_max - len(rows_of[i])) for i in chunk])
                p_mask, c_mask = r.prompt_mask[index], r.completion_mask[index]
                # Trim columns that are padding in every row of the chunk (positions count real tokens only).
                p_cols = p_mask.flatten(0, 1).any(0).nonzero()
                p_from = int(p_cols[0]) if len(p_cols) else p_mask.shape[-1] - 1
                c_cols = c_mask.flatten(0, 1).any(0).nonzero()
                c_to = int(c_cols[-1]) + 1 if len(c_cols) else 1
                p_ids, p_mask = r.prompt_ids[index][..., p_from:], p_mask[..., p_from:]
                c_ids, c_mask = r.completion_ids[index][..., :c_to], c_mask[..., :c_to]
                c_mask = c_mask * real.long().unsqueeze(-1)
                input_ids = torch.cat([p_ids, c_ids], -1).to(device)
                attention = torch.cat([p_mask, c_mask], -1).to(device)
                position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
                attn4d = additive_causal_mask(attention, dtype)
                coef = (batch.advantages[index] * real / n_tok[torch.tensor(chunk)].unsqueeze(1)).to(device)
                grads = per_problem_grads(params, input_ids, attn4d, position_ids, c_ids.to(device),
                                          c_mask.to(device).float(), coef)
                sq = torch.zeros(len(chunk), dtype=torch.float64, device=device)
                dot = torch.zeros(len(chunk), n_dir, dtype=torch.float64, device=device)
                for name, _ in named:
                    g = grads.pop(name).reshape(len(chunk), -1).float()
                    sq += g.pow(2).sum(1, dtype=torch.float64)
                    if n_dir:
                        dot += (g @ slices[name].T).double()
                    del g
                del grads
                idx = torch.tensor(chunk)
                norms[idx] = sq.sqrt().float().cpu()
                if n_dir:
                    dots[idx] = dot.float().cpu()
        return ProblemSignals(norms=norms, dots=dots)
