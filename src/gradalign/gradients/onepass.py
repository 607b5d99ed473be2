"""Exact per-problem gradient norms and alignments from one forward and one backward (METHODS.md §4).

Sequences in a batch do not interact, so one backward of the *summed* surrogate gives every token's
output-gradient δ_t exactly as the problem's own backward would. Every parameter's per-problem gradient is
then a sum of per-token rank-one terms, G_i = Σ_{t∈i} a_t b_tᵀ:

    Linear W        a = δ_t (output grad),            b = x_t (input)
    Linear bias     a = δ_t,                          b = 1
    Embedding E     a = onehot(token_t),              b = δ_t (grad of the embedding output)
    norm weight w   a = δ_t ⊙ ∂y_t/∂w,                b = 1      (y is affine in w: ∂y/∂w = y(w=1) - y(w=0))

A tied head and embedding simply contribute both kinds of terms to the same parameter. Per layer, the
problems' G_i are formed with one batched matmul (the weight-gradient matmul of an ordinary backward, split
by problem) and reduced at once to ‖G_i‖² and ⟨G_i, D⟩; a parameter too large to materialise per problem
(a big vocabulary head) uses the Gram form ‖G_i‖² = Σ_{s,t} (a_s·a_t)(b_s·b_t) instead. The backward itself
only asks autograd for the module outputs' gradients, so no weight gradient is ever formed.
Each parameter is reduced as soon as the backward has reached every module using it, and that layer's
input and output gradient are then let go. Memory: one micro-batch of whole problems' activations (as a
training step), one layer's output gradients (a tied head's until the embedding's arrives), one parameter's
fp32 factors and its G_i for a few problems at a time (docs/scaling.md: "What one rank holds").

Parameters outside those modules (a mixture-of-experts block's fused 3-D expert weights and its router, any custom
module) have no such factorisation here (`unsupported_parameters`). `OnePassGradients.problem_signals` then logs
one warning and scores the model with the naive per-problem backward (`NaiveGradients`): the same exact numbers at
about one backward per problem instead of one per micro-batch. Projected features (`iter_factors`) need the
factors themselves and refuse such a model; so does an FSDP-sharded one, which the naive loop cannot score.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..distributed import SINGLE, ProcessGroup, fsdp_sharded, reshard, shard_group
from .scope import excluded_uses
from .signals import GradientBackend, NaiveGradients, ProblemSignals, full_parameter, parameter_views, trainable
from .surrogate import SurrogateBatch, weighted_surrogate

log = logging.getLogger(__name__)
SUPPORTED = "Linear, Embedding, *Norm"

MATERIALISE_BUDGET = 2**25  # floats of per-problem gradients formed at once (128 MiB in fp32)
BLOCK = 4096  # reductions sum fp32 blocks of this many terms, then the blocks in fp64 (fp32 alone drifts ~1e-4)


def _blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [m, L] as whole BLOCK-wide blocks [m, L // BLOCK, BLOCK] (a view, no copy) and the remainder [m, L % BLOCK]."""
    cut = x.shape[1] - x.shape[1] % BLOCK
    return x[:, :cut].view(x.shape[0], -1, BLOCK), (x[:, cut:] if cut < x.shape[1] else None)


def blocked_inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x [m, L], y [k, L] -> x @ y.T in fp64 accuracy at about fp32 speed."""
    xb, xr = _blocks(x)
    yb, yr = _blocks(y)
    out = torch.bmm(xb.transpose(0, 1), yb.permute(1, 2, 0)).double().sum(0)  # [blocks, m, k] summed in fp64
    return out if xr is None else out + (xr @ yr.T).double()


def blocked_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ‖x_i‖² of x [m, L] in fp64 accuracy: fp32 norms of BLOCK-wide blocks (a plain reduction, ~10× faster
    than a batched dot product), squared and summed in fp64."""
    xb, xr = _blocks(x)
    out = torch.linalg.vector_norm(xb, dim=-1).double().pow(2).sum(1)
    return out if xr is None else out + torch.linalg.vector_norm(xr, dim=-1).double().pow(2)


def exact_math(device: torch.device):
    """Reductions run in full precision even where the forward autocasts to bf16 (the backward's hooks, and code
    called inside a scoring forward's autocast, inherit its state)."""
    return torch.autocast(device.type, enabled=False)


@dataclass
class Factor:
    """Per-token rank-one terms a_t b_tᵀ of one parameter (viewed as a matrix). `a` holds token ids when
    `index` is True (a one-hot over the rows of the parameter: embeddings)."""

    a: torch.Tensor  # [T, rows] or [T] ids
    b: torch.Tensor  # [T, cols]
    index: bool = False
    carrying: torch.Tensor | None = None  # [T] bool, `carrying_tokens` once it is computed

    def exact(self) -> "Factor":
        """In fp32 (fp64 models keep fp64): reductions never run in bf16."""
        return Factor(self.a if self.index else _exact(self.a), _exact(self.b), self.index, self.carrying)

    def tokens(self, start: int, stop: int) -> "Factor":
        """The terms of tokens [start, stop) (their `carrying` mask too, where it is known)."""
        return Factor(self.a[start:stop], self.b[start:stop], self.index,
                      None if self.carrying is None else self.carrying[start:stop])


class FactorsByParameter(Mapping):
    """Each parameter's factors (by parameter id), kept in the model's precision and handed out in fp32 one
    parameter at a time: a bf16 model's activations are never all copied to fp32 at once."""

    def __init__(self, native: dict[int, list[Factor]] | None = None):
        self.native = native or {}

    def __getitem__(self, key: int) -> list[Factor]:
        return [f.exact() for f in self.native.get(key, [])]

    def __iter__(self):
        return iter(self.native)

    def __len__(self) -> int:
        return len(self.native)


def _norm_like(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and "norm" in type(module).__name__.lower() and all(p.dim() == 1 for p in params)


def _factored(module: nn.Module) -> bool:
    """Whether `factors_of` knows this module's per-token rank-one terms."""
    return isinstance(module, (nn.Linear, nn.Embedding)) or _norm_like(module)


def unsupported_parameters(model: nn.Module) -> list[str]:
    """Names of the trainable parameters the one-pass factorisation cannot handle (held outside Linear, Embedding
    and *Norm modules, e.g. MoE experts' fused [E, ·, ·] weights and routers); empty when it covers the model."""
    reshard(model)  # name the parameters by their shards, as the model registers them (FSDP)
    covered = {id(p) for m in model.modules() if _factored(m) for p in m.parameters(recurse=False)}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]


def _detach_output(module, inputs, output):
    return output.detach()


class ActivationCapture:
    """Forward hooks keeping each supported module's input and output for one forward pass.

    Parameters are named as the model registers them (under FSDP, the sharded DTensors), not by the full copies
    FSDP swaps in during a forward. A norm's ∂y/∂w is taken inside its forward, while the parameters still hold
    their forward values.
    """

    def __init__(self, model: nn.Module):
        self.calls: list[tuple[nn.Module, torch.Tensor | dict, torch.Tensor]] = []
        self.sources: list[int] = []  # calls whose input needs no gradient (embeddings): where the backward ends
        self.params: dict[nn.Module, dict[str, nn.Parameter]] = {}
        self.handles = []
        self.probing = False
        missing = unsupported_parameters(model)  # before any hook is registered: nothing to undo
        if missing:
            raise NotImplementedError(f"one-pass factors do not cover the modules holding {missing[:3]} "
                                      f"(supported: {SUPPORTED}); use gradient_backend: naive")
        for module in model.modules():
            left_out = excluded_uses(module)  # a tied embedding's use outside `score_parameters` (gradients.scope)
            own = {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad and n not in left_out}
            if own and _factored(module):
                self.params[module] = own
                self.handles.append(module.register_forward_hook(self._keep))
            elif isinstance(module, nn.Embedding) and not own:
                # A frozen embedding (LoRA) feeds no trainable parameter, but TRL's enable_input_require_grads (PEFT +
                # gradient checkpointing) marks its output as needing a gradient: the backward must still stop here.
                self.handles.append(module.register_forward_hook(_detach_output))

    def _keep(self, module, inputs, output):
        if self.probing:  # the probe forwards of `_affine_derivatives` below
            return
        x = inputs[0]
        if not x.requires_grad:
            self.sources.append(len(self.calls))
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            self.probing = True
            try:
                x = _affine_derivatives(module, x.detach(), self.params[module])
            finally:
                self.probing = False
        self.calls.append((module, x, output))

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []


@torch.no_grad()
def _affine_derivatives(module: nn.Module, x: torch.Tensor, params: dict[str, nn.Parameter]) -> dict:
    """∂y/∂p of a norm-like module for each of its 1-D parameters p: y is affine in p, so y(p=1) - y(p=0)."""
    out = {}
    for name in params:
        current = getattr(module, name)  # the forward's value (FSDP: the gathered copy)
        out[name] = (functional_call(module, {name: torch.ones_like(current)}, (x,))
                     - functional_call(module, {name: torch.zeros_like(current)}, (x,)))
    return out


def _exact(t: torch.Tensor) -> torch.Tensor:
    """fp32 for low-precision models (bf16/fp16 activations), the model's own precision otherwise."""
    t = t.detach()
    return t if t.dtype == torch.float64 else t.float()


def factors_of(calls, grads, params: dict[nn.Module, dict[str, nn.Parameter]]) -> dict[int, list[Factor]]:
    """Rank-one factors per parameter id, from each module call's input, output and output gradient."""
    out: dict[int, list[Factor]] = defaultdict(list)
    for (module, x, y), g in zip(calls, grads):  # the model's precision: `Factor.exact` converts when reduced
        if g is None:
            continue  # this output does not reach the loss
        own = params[module]
        if isinstance(module, nn.Linear):
            a = g.reshape(-1, g.shape[-1])
            if "weight" in own:
                out[id(own["weight"])].append(Factor(a, x.detach().reshape(-1, x.shape[-1])))
            if "bias" in own:
                out[id(own["bias"])].append(Factor(a, torch.ones(a.shape[0], 1, dtype=a.dtype, device=a.device)))
        elif isinstance(module, nn.Embedding):
            if module.padding_idx is not None:  # autograd gives the padding row no gradient, wherever it occurs
                g = g * (x != module.padding_idx).unsqueeze(-1).to(g.dtype)
            out[id(own["weight"])].append(Factor(x.reshape(-1), g.reshape(-1, g.shape[-1]), index=True))
        else:  # norm-like: x holds ∂y/∂p of each 1-D parameter (the output is affine in it)
            for name, p in own.items():
                u = (_exact(g) * _exact(x[name])).reshape(-1, p.shape[0])
                out[id(p)].append(Factor(u, torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)))
    return out


def _segments(token_problem: torch.Tensor, n: int) -> list[slice]:
    """Token slices of each problem (tokens are laid out contiguously per problem)."""
    counts = torch.bincount(token_problem, minlength=n).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    return [slice(starts[i], starts[i + 1]) for i in range(n)]


def token_problems(segments: list[slice], device) -> torch.Tensor:
    """[T] each token's problem, as a position in `segments` (consecutive token slices)."""
    lengths = torch.tensor([s.stop - s.start for s in segments], device=device)
    return torch.repeat_interleave(torch.arange(len(segments), device=device), lengths)


def carrying_tokens(f: Factor) -> torch.Tensor:
    """[T] bool: the tokens whose term a_t b_tᵀ can be non-zero. Padding, and positions whose output the loss never
    reads (a prompt token's logits, the last block's outputs there), have a zero output gradient: a_t = 0 (an
    embedding's b_t = 0). Exact: a sum of absolute values is 0 only if every entry is. Computed once per factor."""
    if f.carrying is None:
        f.carrying = (f.b if f.index else f.a).abs().sum(-1) > 0
    return f.carrying


def _packed(f: Factor, token_problem: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense factor's tokens as [m, T_max, rows] and [m, T_max, cols], problem by problem, keeping only the
    `carrying_tokens`. Slots past a problem's last kept token point at a dropped token, whose a_t = 0 (or at an
    appended zero row), so the product ignores them."""
    m, a, b = len(lengths), f.a, f.b
    keep = carrying_tokens(f)
    if len(set(lengths)) == 1 and bool(keep.all()):  # nothing to drop: the rows as they are
        return a.view(m, lengths[0], -1), b.view(m, lengths[0], -1)
    tokens = keep.nonzero().squeeze(1)
    problem = token_problem[tokens]
    counts = torch.bincount(problem, minlength=m)
    slot = torch.arange(len(tokens), device=a.device) - (counts.cumsum(0) - counts)[problem]
    dropped = (~keep).nonzero()
    if len(dropped):
        filler = int(dropped[0])
    else:  # unequal token counts and nothing to drop
        a, b = torch.cat([a, a.new_zeros(1, a.shape[1])]), torch.cat([b, b.new_zeros(1, b.shape[1])])
        filler = a.shape[0] - 1
    src = torch.full((m, max(int(counts.max()), 1)), filler, dtype=torch.long, device=a.device)
    src[problem, slot] = tokens
    return a.index_select(0, src.view(-1)).view(m, src.shape[1], -1), b.index_select(0, src.view(-1)).view(
        m, src.shape[1], -1)


def materialised(factors: list[Factor], shape: tuple[int, int], seg: list[slice]) -> torch.Tensor:
    """G_i for the problems of `seg` (consecutive token slices), [len(seg), rows, cols]: one batched matmul per
    factor over each problem's tokens (the weight-gradient matmul of a backward, split by problem)."""
    rows, cols = shape
    start, stop = seg[0].start, seg[-1].stop
    lengths = [s.stop - s.start for s in seg]
    token_problem = token_problems(seg, factors[0].b.device)
    G = None
    for f in sorted(factors, key=lambda f: f.index):  # a dense factor first: its matmul writes G, no zero fill
        part = f.tokens(start, stop)
        if f.index:  # one-hot rows: each token's b goes to row id of its problem's G
            G = part.b.new_zeros(len(seg), rows, cols) if G is None else G
            G.view(-1, cols).index_add_(0, part.a + token_problem * rows, part.b)
            continue
        A, B = _packed(part, token_problem, lengths)
        G = torch.bmm(A.transpose(1, 2), B) if G is None else G.baddbmm_(A.transpose(1, 2), B)
    return G


GRAM_TOKENS = 0.25  # the Gram form pays when a problem's tokens T < GRAM_TOKENS · rows·cols / (rows + cols)


def _gram_pays(fs: list[Factor], shape: tuple[int, int], segments: list[slice]) -> bool:
    """Whether a parameter's problems have so few tokens that forming each G_i (a matmul with an inner dimension of
    T) costs more than the Gram form's T² (rows + cols) plus one token-level matmul (measured on SmolLM2-135M with
    ~40 tokens a problem: benchmarks/README.md)."""
    rows, cols = shape
    tokens = sum(int(carrying_tokens(f).sum()) for f in fs) / max(len(segments), 1)
    return tokens < GRAM_TOKENS * rows * cols / (rows + cols)


def _gram_norm2(factors: list[Factor], s: slice) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=factors[0].b.device)
    for f in factors:
        for h in factors:
            bb = f.b[s] @ h.b[s].T
            if f.index and h.index:
                aa = (f.a[s][:, None] == h.a[s][None, :]).to(bb.dtype)
            elif f.index:
                aa = h.a[s][:, f.a[s]].T
            elif h.index:
                aa = f.a[s][:, h.a[s]]
            else:
                aa = f.a[s] @ h.a[s].T
            total += (aa * bb).sum(dtype=torch.float64)
    return total


def _gram_dots(factors: list[Factor], D: torch.Tensor, s: slice) -> torch.Tensor:
    """⟨G_i, D_k⟩ = Σ_t a_tᵀ D_k b_t for each direction k; D is [K, rows, cols]."""
    total = torch.zeros(D.shape[0], dtype=torch.float64, device=D.device)
    for f in factors:
        if f.index:
            total += torch.einsum("ktc,tc->k", D[:, f.a[s]], f.b[s]).double()
        else:
            total += torch.einsum("tr,krc,tc->k", f.a[s], D, f.b[s]).double()
    return total


def matrix_shape(p: torch.Tensor) -> tuple[int, int]:
    """How a parameter is viewed as a matrix of rank-one terms: W (out, in); 1-D (n, 1); scalar (1, 1)."""
    if p.dim() == 0:
        return 1, 1
    return (p.shape[0], p[0].numel()) if p.dim() > 1 else (p.shape[0], 1)


@dataclass
class MicroBatchFactors:
    """Everything a reducer needs about one micro-batch of whole problems."""

    problems: torch.Tensor  # [m] problem indices (into the SurrogateBatch)
    segments: list[slice]  # token slice of each problem in the factors
    factors: FactorsByParameter  # id(param) -> factors (fp32 on access)
    rows: torch.Tensor | None = None  # [R] the completion rows of the pass, problem by problem (batch row indices)
    seq_len: int = 0  # tokens per row: row q holds tokens [q·seq_len, (q+1)·seq_len)

    @functools.cached_property
    def row_problem(self) -> torch.Tensor:
        """[R] each row's problem, as a position in `problems` (rows are laid out problem by problem)."""
        counts = torch.tensor([(s.stop - s.start) // self.seq_len for s in self.segments], dtype=torch.long)
        return torch.arange(len(counts)).repeat_interleave(counts)


def micro_batches(batch: SurrogateBatch, micro_batch: int) -> list[list[int]]:
    """Whole problems per micro-batch (a problem's tokens must meet in one reduction); problems whose
    advantages are all zero are left out: their gradient is exactly zero."""
    sizes = torch.bincount(batch.rollouts.group, minlength=batch.num_problems).tolist()
    out, current, size = [], [], 0
    for i in batch.live_problems():
        k = sizes[i]
        if current and size + k > micro_batch:
            out.append(current)
            current, size = [], 0
        current.append(i)
        size += k
    return out + ([current] if current else [])


def passes(model, batch: SurrogateBatch, micro_batch: int, group: ProcessGroup = SINGLE):
    """(problems, rows, weights, segments) of each forward+backward over `batch`: whole problems per micro-batch.

    An FSDP-sharded model makes as many passes on every rank; a rank's extra passes run one row with zero weight
    and have no problems, so their consumers still join each parameter's gathers."""
    seq_len = batch.rollouts.seq_len
    rows_by_problem = batch.rows_by_problem()
    parts = micro_batches(batch, micro_batch)
    for i in range(shard_group(group, model).max(len(parts))):
        problems = parts[i] if i < len(parts) else []
        if not problems:
            yield problems, torch.zeros(1, dtype=torch.long), torch.zeros(batch.num_problems), []
            continue
        rows = torch.cat([rows_by_problem[j] for j in problems])
        # Each token's problem: rows are laid out problem by problem, each contributing seq_len tokens.
        token_problem = batch.rollouts.group[rows].repeat_interleave(seq_len)
        remap = torch.zeros(batch.num_problems, dtype=torch.long)
        remap[torch.tensor(problems, dtype=torch.long)] = torch.arange(len(problems))
        yield problems, rows, torch.ones(batch.num_problems), _segments(remap[token_problem], len(problems))


def backward_factors(model, batch: SurrogateBatch, rows: torch.Tensor, weights: torch.Tensor, on_parameter) -> None:
    """One forward and one backward of the weighted surrogate over `rows`, handing each parameter's per-token
    factors (in the model's precision) to `on_parameter(param, factors)` as soon as the backward has produced
    every output gradient they need. Each module call's input and output gradient are let go once handed on, so
    the backward never holds every layer's factors at once (a tied head and embedding wait for each other).

    The backward runs to the outputs of the calls whose input needs no gradient (the embeddings); every other
    output gradient is caught by a hook on its way there. No weight gradient is formed. Parameters reach
    `on_parameter` in the backward's order, the same on every rank (FSDP gathers inside it stay in step).
    """
    capture = ActivationCapture(model)
    try:
        loss = weighted_surrogate(model, batch, weights, rows)
    finally:
        capture.close()
    calls, params = capture.calls, capture.params
    device = loss.device
    owners = [list(params[module].values()) for module, _, _ in calls]
    pending = Counter(id(p) for ps in owners for p in ps)  # calls still to come, per parameter (forward order)
    by_id = {id(p): p for ps in owners for p in ps}
    collected: dict[int, list[Factor]] = defaultdict(list)

    def hand_on(i: int, g: torch.Tensor | None) -> None:
        for pid, fs in factors_of([calls[i]], [g], params).items():
            collected[pid].extend(fs)
        calls[i] = None  # this call's input and output are no longer needed
        for p in owners[i]:
            pending[id(p)] -= 1
            if pending[id(p)] == 0:
                with exact_math(device):
                    on_parameter(p, collected.pop(id(p), []))

    if any(not y.requires_grad for _, _, y in calls):
        raise NotImplementedError("a module with trainable parameters gave an output without gradient: gradient "
                                  "checkpointing with use_reentrant=True hides layer outputs from the one-pass "
                                  "scorer; use use_reentrant=False (TRL's default)")
    sources = set(capture.sources)
    if calls and not sources:  # the backward would have nowhere to run to, and every hook would stay silent
        raise NotImplementedError("one-pass scoring found no module whose input needs no gradient (an embedding); "
                                  "use gradient_backend: naive")
    for i, (_, _, y) in enumerate(calls):
        if i not in sources:
            y.register_hook(lambda g, i=i: hand_on(i, g))
    del capture
    targets = [calls[i][2] for i in sorted(sources)]
    grads = torch.autograd.grad(loss, targets, allow_unused=True) if targets else []
    del loss, targets
    for i, g in zip(sorted(sources), grads):
        hand_on(i, g)
    for pid, left in list(pending.items()):  # outputs that do not reach the loss: their hooks never fired
        if left > 0:
            pending[pid] = 0
            with exact_math(device):
                on_parameter(by_id[pid], collected.pop(pid, []))


def iter_factors(model, batch: SurrogateBatch, micro_batch: int = 256, group: ProcessGroup = SINGLE):
    """Per micro-batch: one forward, one backward, and every parameter's per-token factors, all at once.

    For reductions that need a micro-batch's parameters together (the projected features of
    `gradients.projections`); `OnePassGradients` reduces each parameter as the backward reaches it instead.
    """
    missing = unsupported_parameters(model)
    if missing:  # projections are built from the factors themselves: there is no exact fallback to take
        raise NotImplementedError(f"projected features need one-pass factors, which do not cover {missing[:3]} "
                                  f"(supported: {SUPPORTED}); use a method scored by exact per-problem signals "
                                  f"(gradalign, gradalign-z, norm, ...), or freeze those parameters")
    for problems, rows, weights, segments in passes(model, batch, micro_batch, group):
        factors: dict[int, list[Factor]] = {}
        backward_factors(model, batch, rows, weights, lambda p, fs, out=factors: out.__setitem__(id(p), fs))
        yield MicroBatchFactors(torch.tensor(problems, dtype=torch.long), segments,
                                FactorsByParameter(factors if problems else {}))
        del factors


def per_problem_gradients(fs: list[Factor], shape: tuple[int, int], segments: list[slice], budget: int):
    """Yield (slice of the micro-batch's problems, their G_i flattened [m, rows·cols]) within a memory budget."""
    size = shape[0] * shape[1]
    step = max(1, budget // size)
    for start in range(0, len(segments), step):
        part = segments[start:start + step]
        yield slice(start, start + len(part)), materialised(fs, shape, part).reshape(len(part), -1)


class OnePassGradients(GradientBackend):
    """Exact `problem_signals` at about the cost of one forward+backward over the rollouts; models it cannot
    factor (`unsupported_parameters`) are scored by the naive per-problem loop instead (module docstring)."""

    def __init__(self, micro_batch: int = 256, budget: int = MATERIALISE_BUDGET, force_gram: bool = False):
        super().__init__(micro_batch)
        self.budget = budget
        self.force_gram = force_gram  # tests exercise both reduction paths
        self.warned = False  # the fallback is announced once per backend, not once per scoring call

    def fallback(self, model, missing: list[str]) -> NaiveGradients:
        """The naive backend that scores a model one-pass cannot factor, announced once."""
        if fsdp_sharded(model):  # the naive loop reads whole per-problem gradients: no exact backend is left
            raise NotImplementedError(f"one-pass factors do not cover {missing[:3]} (supported: {SUPPORTED}) and "
                                      f"the naive fallback cannot score an FSDP-sharded model; score it unsharded")
        if not self.warned:
            log.warning("one-pass factors do not cover %d trainable parameter(s) (%s%s; supported: %s): scoring with "
                        "the naive per-problem backward (exact, about one backward per problem instead of one pass)",
                        len(missing), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else "", SUPPORTED)
            self.warned = True
        return NaiveGradients(self.micro_batch)

    def problem_signals(self, model, batch: SurrogateBatch, directions: torch.Tensor,
                        group: ProcessGroup = SINGLE, per_completion: bool = False,
                        with_norms: bool = True) -> ProblemSignals:
        missing = unsupported_parameters(model)
        if missing:
            return self.fallback(model, missing).problem_signals(model, batch, directions, group, per_completion,
                                                                 with_norms)
        n, k_dir = batch.num_problems, directions.shape[0]
        norms2 = torch.zeros(n, dtype=torch.float64) if with_norms or not per_completion else None
        dots = torch.zeros(n, k_dir, dtype=torch.float64)
        row_dots = torch.zeros(batch.rollouts.group.numel(), k_dir, dtype=torch.float64) if per_completion else None
        seq_len = batch.rollouts.seq_len
        params = trainable(model)
        views = dict(zip(map(id, params), parameter_views(params, directions))) if k_dir else {}
        for problems, rows, weights, segments in passes(model, batch, self.micro_batch, group):
            mb = MicroBatchFactors(torch.tensor(problems, dtype=torch.long), segments, FactorsByParameter(), rows,
                                   seq_len)

            def reduce(p, factors, mb=mb):
                # FSDP: this parameter's directions, gathered from every rank while it is reduced
                D = full_parameter(views[id(p)], p) if k_dir else directions.new_zeros(0)
                if factors:
                    fs, D = [f.exact() for f in factors], D.reshape(k_dir, *matrix_shape(p))
                    if row_dots is None:
                        self._reduce(mb, fs, D, norms2, dots)
                    else:
                        self._reduce_rows(mb, fs, D, norms2, dots, row_dots)

            backward_factors(model, batch, rows, weights, reduce)
        norms = torch.full((n,), float("nan")) if norms2 is None else norms2.clamp(min=0).sqrt().float()
        return ProblemSignals(norms=norms, dots=dots.float(),
                              completion_dots=None if row_dots is None else row_dots.float())

    def squared_norms(self, mb: MicroBatchFactors, fs: list[Factor], shape: tuple[int, int], n: int) -> torch.Tensor:
        """One parameter's ‖G_i‖² for the problems of a micro-batch (fp64, [n]; 0 for problems not in it)."""
        norms2 = torch.zeros(n, dtype=torch.float64)
        self._reduce(mb, fs, torch.zeros(0, *shape, dtype=fs[0].b.dtype), norms2, None)
        return norms2

    def _reduce(self, mb: MicroBatchFactors, fs: list[Factor], D: torch.Tensor, norms2, dots) -> None:
        """Add one parameter's ‖G_i‖² and ⟨G_i, D_k⟩ for the problems of a micro-batch: from each problem's G_i, or,
        where that is too large or its few tokens make the per-problem matmuls inefficient (`_gram_pays`), from the
        Gram form, with the dots from one token-level matmul."""
        if not mb.segments:  # an FSDP rank's padding pass: no problems
            return
        shape = (D.shape[1], D.shape[2])
        dense = not any(f.index for f in fs)
        if self.force_gram or shape[0] * shape[1] > self.budget or (dense and _gram_pays(fs, shape, mb.segments)):
            if dense:
                self._reduce_gram(mb, fs, D, norms2, dots)
                return
            for j, s in enumerate(mb.segments):  # an embedding's one-hot factor: problem by problem
                norms2[mb.problems[j]] += _gram_norm2(fs, s).cpu()
                if D.shape[0]:
                    dots[mb.problems[j]] += _gram_dots(fs, D.to(fs[0].b.device, fs[0].b.dtype), s).cpu()
            return
        for part, G in per_problem_gradients(fs, shape, mb.segments, self.budget):
            sel = mb.problems[part]
            norms2[sel] += blocked_sq_norms(G).cpu()
            if D.shape[0]:
                dots[sel] += blocked_inner(G, D.reshape(D.shape[0], -1).to(G.device, G.dtype)).cpu()

    def _reduce_gram(self, mb: MicroBatchFactors, fs: list[Factor], D: torch.Tensor, norms2, dots) -> None:
        """Dense factors only: ‖G_i‖² = Σ_{f,h} Σ_{s,t} (a_s·a_t)(b_s·b_t) over each problem's packed tokens (two
        small batched matmuls per pair of factors), ⟨G_i, D_k⟩ = Σ_{t∈i} a_tᵀ D_k b_t from one matmul over all
        tokens."""
        lengths = [s.stop - s.start for s in mb.segments]
        token_problem = token_problems(mb.segments, fs[0].b.device)
        packed = [_packed(f, token_problem, lengths) for f in fs]
        total = torch.zeros(len(lengths), dtype=torch.float64, device=fs[0].b.device)
        for A, B in packed:
            for A2, B2 in packed:
                total += (torch.bmm(A, A2.transpose(1, 2)) * torch.bmm(B, B2.transpose(1, 2))).sum((1, 2),
                                                                                                   dtype=torch.float64)
        norms2[mb.problems] += total.cpu()
        if D.shape[0]:
            D = D.to(fs[0].b.device, fs[0].b.dtype)
            per_token = sum(_token_terms(f, D) for f in fs)  # [T, K] fp64
            dots[mb.problems] += per_token.new_zeros(len(lengths), D.shape[0]).index_add_(
                0, token_problem, per_token).cpu()

    def _reduce_rows(self, mb: MicroBatchFactors, fs: list[Factor], D: torch.Tensor, norms2, dots, row_dots) -> None:
        """`_reduce` that also keeps every completion's term ⟨G_j, D_k⟩ = Σ_{t∈j} a_tᵀ D_k b_t, per token (one
        matmul of the size of the layer's forward, never a per-row G_j), summed by row and then by problem. Norms
        (`norms2` not None) still need each problem's G_i, formed as `_reduce` does."""
        if norms2 is not None:
            self._reduce(mb, fs, D[:0], norms2, dots[:, :0])
        if not D.shape[0] or not mb.segments:
            return
        D = D.to(fs[0].b.device, fs[0].b.dtype)
        per_token = sum(_token_terms(f, D) for f in fs)  # [T, K] fp64
        n_rows = per_token.shape[0] // mb.seq_len
        terms = per_token.reshape(n_rows, mb.seq_len, -1).sum(1).cpu()  # [R, K] one per completion row
        row_dots[mb.rows] += terms
        dots[mb.problems] += torch.zeros(len(mb.problems), D.shape[0], dtype=torch.float64).index_add_(
            0, mb.row_problem, terms)


def _token_terms(f: Factor, D: torch.Tensor) -> torch.Tensor:
    """a_tᵀ D_k b_t for every token t and direction k, [T, K]: products in the factors' precision, each token's sum
    accumulated in fp64 (no fp64 copy of the factors). Tokens outside `carrying_tokens` are 0 without a product."""
    tokens = carrying_tokens(f).nonzero().squeeze(1)
    a, b = f.a.index_select(0, tokens), f.b.index_select(0, tokens)
    rows = (D[k, a] if f.index else a @ D[k] for k in range(D.shape[0]))  # one-hot a: D_k's rows of the ids
    out = torch.zeros(f.b.shape[0], D.shape[0], dtype=torch.float64, device=f.b.device)
    out[tokens] = torch.stack([q.mul_(b).sum(-1, dtype=torch.float64) for q in rows], 1)
    return out
