"""Projected per-problem gradient features φ(x) = R g(x) ∈ R^d from the one-pass hooks (METHODS.md §3-4).

Every projector turns the per-token factors of `onepass.iter_factors` (a parameter's per-problem gradient is
G_i = Σ_{t∈i} a_t b_tᵀ) into features [n_problems, d] whose inner products are unbiased estimates of the
gradients' inner products: E_R ⟨R g(x), R g(y)⟩ = ⟨g(x), g(y)⟩ (every R below has E[RᵀR] = I).

  factored  LoGra-style two-sided projection per parameter matrix: block_p = P_out G_p P_inᵀ
            = Σ_t (P_out a_t)(P_in b_t)ᵀ, i.e. R_p = P_out ⊗ P_in on the row-major vec(G_p). G_i is never
            formed; an index factor (embedding rows) makes P_out a_t a column gather of P_out. P_out, P_in are
            Gaussian with variance 1/d_out, 1/d_in (identity where a side is not reduced, e.g. biases and norms
            have a single column). The total d is split across parameter tensors (see `allocate`, each gets
            >= 1): proportional to their size by default, or to a measured gradient-energy share
            (`gradient_energy` on the validation batch); each block d_out × d_in is as balanced as the matrix
            allows. Option `sketch="khatri-rao"`: d_p rank-one rows u_k ⊗ v_k instead of one Kronecker product
            (feature k = Σ_t (u_kᵀ a_t)(v_kᵀ b_t) / √d_p, still from the factors): same unbiasedness, but an
            error close to a dense map's, where the Kronecker form's error on low-rank per-problem gradients
            only shrinks like 1/d_out + 1/d_in (see the fidelity figures in benchmarks/README.md).
  dense     a dense Rademacher (±1/√d) or Gaussian (N(0, 1/d)) d × P matrix over the whole flat gradient,
            never held whole: parameter p's block is generated in fixed column blocks, each from a seed
            derived from (seed, parameter name, block index), and applied to the materialised G_i.
  sparse    CROPI: a fixed random subset of each parameter's coordinates (fraction f, default 10%, exactly
            k_p = max(1, round(f·n_p)) coordinates drawn without replacement and scaled by √(n_p / k_p), so
            the selection is unbiased), then a Gaussian N(0, 1/d) JL map to d generated like `dense` (the
            paper's), or a CountSketch (`sketch="countsketch"`: each kept coordinate adds ±its value to one
            seeded feature; CROPI's default, as faithful at d >= 8192 and at the cost of exact scoring).

Determinism: every random matrix comes from a torch CPU generator seeded with sha256(seed, kind, parameter
*name*, role, block) — never Python's salted `hash`, never `id(param)` — so the same seed and the same
architecture give bit-identical matrices in any process, any round, for train and validation alike.

`project_flat(model, vectors)` applies the same R to flat gradients (the layout of `signals.flat_grad`: the
trainable parameters in `model.named_parameters()` order, each row-major). It is a separate code path from
`features` (no factors involved): project the validation gradient g_V with it, or use it to check features.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..distributed import SINGLE, ProcessGroup
from . import onepass
from .onepass import Factor, MicroBatchFactors, exact_math, iter_factors, matrix_shape
from .surrogate import SurrogateBatch

DENSE_BLOCK = 2**22  # random entries generated at once for dense / sparse maps (16 MiB in fp32)
GATHER_BUDGET = 2**27  # per-problem coordinates gathered before a dense / sparse map is applied (512 MiB fp32)
FORMAT = 1  # bump when the construction of any projection changes


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit generator seed from (seed, parts): stable across processes, platforms and Python hash salts."""
    blob = json.dumps([int(seed), *[str(p) for p in parts]]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


def _generator(seed: int, *parts) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, *parts))


def gaussian(shape: tuple[int, ...], scale: float, seed: int, *parts) -> torch.Tensor:
    """N(0, scale²) entries, fp32, CPU: a pure function of (shape, scale, seed, parts)."""
    return torch.randn(shape, generator=_generator(seed, *parts), dtype=torch.float32).mul_(scale)


def rademacher(shape: tuple[int, ...], scale: float, seed: int, *parts) -> torch.Tensor:
    """±scale entries with probability 1/2 each, fp32, CPU."""
    bits = torch.randint(0, 2, shape, generator=_generator(seed, *parts), dtype=torch.float32)
    return bits.mul_(2 * scale).sub_(scale)


@dataclass(frozen=True)
class Block:
    """One trainable parameter in the flat layout: its name, matrix view, flat offset and size."""

    name: str
    rows: int
    cols: int
    offset: int

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def named_trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the trainable parameters, in `model.parameters()` (= `flat_grad`) order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def layout(model) -> list[Block]:
    blocks, offset = [], 0
    for name, p in named_trainable(model):
        rows, cols = matrix_shape(p)
        blocks.append(Block(name, rows, cols, offset))
        offset += rows * cols
    return blocks


def _feature_dtype(model) -> torch.dtype:
    p = next(model.parameters())
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _live_tokens(f: Factor, problem_of: torch.Tensor) -> tuple[Factor, torch.Tensor]:
    """The factor's tokens whose term can be non-zero (`onepass.carrying_tokens`), and their problems."""
    keep = onepass.carrying_tokens(f).nonzero().squeeze(1)
    return Factor(f.a.index_select(0, keep), f.b.index_select(0, keep), f.index), problem_of.index_select(0, keep)


class Projector:
    """Base: `features` maps a batch's per-problem gradients to [n_problems, dim] via the one-pass hooks."""

    kind = "base"

    def __init__(self, dim: int, seed: int = 0):
        if int(dim) < 1:
            raise ValueError(f"projection dimension must be >= 1 (got {dim})")
        self.dim, self.seed = int(dim), int(seed)
        self._arch: str | None = None
        self._blocks: list[Block] | None = None

    # -- binding to an architecture ----------------------------------------------------------------------

    def bind(self, model) -> list[Block]:
        """The parameter layout of `model`; matrices are (re)built when the architecture changes."""
        blocks = layout(model)
        key = json.dumps([[b.name, b.rows, b.cols] for b in blocks])
        if key != self._arch:
            self._arch, self._blocks = key, blocks
            self._build(blocks)
        return self._blocks

    def _build(self, blocks: list[Block]) -> None:
        """Per-architecture set-up (allocation, index sets); random matrices may be made lazily."""

    # -- public API ----------------------------------------------------------------------------------------

    def features(self, model, batch: SurrogateBatch, micro_batch: int = 256) -> torch.Tensor:
        """φ(x_i) for every problem of `batch`, [n_problems, dim] (zero rows for zero-variance problems)."""
        return self.features_and_flat(model, batch, None, micro_batch)[0]

    def features_and_flat(self, model, batch: SurrogateBatch, vectors: torch.Tensor | None,
                          micro_batch: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`features(batch)` and `project_flat(vectors)` together (e.g. candidates and g_V); dense and sparse maps
        generate each random block once for both instead of twice."""
        blocks = self.bind(model)
        named = named_trainable(model)
        device = next(model.parameters()).device
        out = torch.zeros(batch.num_problems, self.dim, dtype=_feature_dtype(model), device=device)
        for mb in iter_factors(model, batch, micro_batch):
            for block, (_, p) in zip(blocks, named):
                fs = mb.factors.get(id(p))
                if fs:
                    with exact_math(device):
                        self._accumulate(block, fs, mb, out)
        return out, (None if vectors is None else self.project_flat(model, vectors))

    def project_flat(self, model, vectors: torch.Tensor) -> torch.Tensor:
        """R v for flat gradients v ([P] or [n, P], `signals.flat_grad` layout): [dim] or [n, dim]."""
        blocks = self.bind(model)
        single = vectors.dim() == 1
        v = vectors.unsqueeze(0) if single else vectors
        total = blocks[-1].offset + blocks[-1].numel if blocks else 0
        if v.shape[1] != total:
            raise ValueError(f"project_flat: vectors have {v.shape[1]} coordinates, the model has {total}")
        dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
        v = v.to(dtype)
        out = torch.zeros(v.shape[0], self.dim, dtype=dtype, device=v.device)
        with exact_math(v.device):
            for block in blocks:
                self._project_block(block, v[:, block.offset:block.offset + block.numel], out)
        return out[0] if single else out

    def metadata(self) -> dict:
        meta = {"kind": self.kind, "dim": self.dim, "seed": self.seed, "projection_format": FORMAT}
        if self._arch is not None:
            meta["architecture"] = hashlib.sha256(self._arch.encode()).hexdigest()[:16]
        return meta

    # -- per kind ------------------------------------------------------------------------------------------

    def _accumulate(self, block: Block, fs: list[Factor], mb: MicroBatchFactors, out: torch.Tensor) -> None:
        raise NotImplementedError

    def _project_block(self, block: Block, G: torch.Tensor, out: torch.Tensor) -> None:
        """Add R_p vec(G_p) for flat per-parameter gradients G [n, numel]."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- factored


def allocate(weights: list[float], caps: list[int], total: int) -> list[int]:
    """Integers d_p with Σ d_p = min(total, Σ caps), 1 <= d_p <= caps[p], d_p ∝ weights[p] otherwise.

    Water-filling (parameters that would exceed their cap get exactly the cap, the rest is re-shared), then
    largest remainders. Deterministic: ties go to the earlier parameter.
    """
    n = len(weights)
    if total < n:
        raise ValueError(f"projection dimension {total} is smaller than the number of parameter tensors ({n}); "
                         f"the factored projection needs at least one feature per tensor")
    caps = [int(c) for c in caps]
    total = min(total, sum(caps))
    w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    if w.sum() <= 0:
        w = np.ones(n)
    w = np.where(w > 0, w, w[w > 0].min() * 1e-6 if (w > 0).any() else 1.0)
    fixed = np.zeros(n, dtype=bool)
    share = np.zeros(n)
    for _ in range(n + 1):  # water-filling: at most n parameters get capped
        free = total - sum(caps[i] for i in range(n) if fixed[i])
        live = ~fixed
        share[live] = w[live] / w[live].sum() * free
        share[fixed] = np.asarray(caps)[fixed]
        over = live & (share > np.asarray(caps))
        if not over.any():
            break
        fixed |= over
    share = np.clip(share, 1.0, np.asarray(caps, dtype=np.float64))
    d = np.floor(share).astype(np.int64)
    # Largest remainders (and repairs of the clip to >= 1) until the total is exact.
    order = np.argsort(-(share - d), kind="stable")
    i = 0
    while d.sum() < total:
        j = order[i % n]
        if d[j] < caps[j]:
            d[j] += 1
        i += 1
    order = np.argsort(-d, kind="stable")
    i = 0
    while d.sum() > total:
        j = order[i % n]
        if d[j] > 1:
            d[j] -= 1
        i += 1
    return d.tolist()


def factor_shape(budget: int, rows: int, cols: int, shape: str = "balanced") -> tuple[int, int]:
    """(d_out, d_in) with d_out <= rows, d_in <= cols and the largest product <= budget.

    Among the largest products: `balanced` prefers d_out ≈ d_in (the variance of a two-sided Gaussian sketch
    of a low-rank matrix grows like 1/d_out + 1/d_in), `aspect` prefers d_out / d_in ≈ rows / cols.
    """
    budget = min(budget, rows * cols)
    d_out = np.arange(max(1, -(-budget // cols)), min(rows, budget) + 1)
    d_in = np.minimum(cols, budget // d_out)
    prod = d_out * d_in
    best = prod == prod.max()
    target = 0.0 if shape == "balanced" else math.log(rows / cols)
    skew = np.abs(np.log(d_out / d_in) - target)
    j = int(np.flatnonzero(best)[np.argmin(skew[best])])
    return int(d_out[j]), int(d_in[j])


class FactoredProjector(Projector):
    """Per-parameter projection from the per-token factors a_t, b_t; never forms G_i.

    sketch: "kronecker" (LoGra, default): block_p = P_out G_p P_inᵀ, R_p = P_out ⊗ P_in with P_out
            [d_out, rows] ~ N(0, 1/d_out), P_in [d_in, cols] ~ N(0, 1/d_in), identity on a side kept whole;
            d_out × d_in = d_p as balanced as the matrix allows (`shape`). Per token it costs
            rows·d_out + cols·d_in, plus d_p per token for the per-problem sums.
            "khatri-rao": d_p rank-one rows, feature k = u_kᵀ G_p v_k / √d_p = Σ_t (u_kᵀa_t)(v_kᵀb_t) / √d_p
            with u_k, v_k standard Gaussian (a side of size 1 uses 1): R_p's rows are u_k ⊗ v_k. Unbiased
            like the Kronecker form but with a variance within a small constant of a dense Gaussian map, where
            the Kronecker form's error on low-rank per-problem gradients shrinks only like 1/d_out + 1/d_in.
            Per token it costs (rows + cols)·d_p.
    allocation: how the total d is split across parameter tensors (each gets >= 1, at most its size):
            "size" (d_p ∝ numel, default), "sqrt-size" (∝ √numel), or "energy" with `shares` (a dict
            parameter name -> weight, e.g. `gradient_energy` of the validation batch). Energy shares are part of
            the projection: they are in `metadata()`; measure them once and reuse them for every round.
    shape (kronecker): "balanced" (d_out ≈ d_in, default) or "aspect" (d_out / d_in ≈ rows / cols).
    """

    kind = "factored"
    CHUNK = 2**24  # floats of per-token projected factors held at once

    def __init__(self, dim: int, seed: int = 0, allocation: str = "size", shares: dict[str, float] | None = None,
                 shape: str = "balanced", sketch: str = "kronecker"):
        super().__init__(dim, seed)
        if allocation not in ("size", "sqrt-size", "energy"):
            raise ValueError(f"unknown allocation '{allocation}' (choose from: size, sqrt-size, energy)")
        if allocation == "energy" and not shares:
            raise ValueError("allocation 'energy' needs shares: {parameter name: weight} (see gradient_energy)")
        if shape not in ("balanced", "aspect"):
            raise ValueError(f"unknown shape '{shape}' (choose from: balanced, aspect)")
        if sketch not in ("kronecker", "khatri-rao"):
            raise ValueError(f"unknown sketch '{sketch}' (choose from: kronecker, khatri-rao)")
        self.allocation, self.shape, self.sketch = allocation, shape, sketch
        self.shares = {k: float(v) for k, v in shares.items()} if shares else None
        # per block: (feature offset, d_out, d_in); khatri-rao: (offset, d_p, d_p)
        self.plan: list[tuple[int, int, int]] = []
        self._mats: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    def _weights(self, blocks: list[Block]) -> list[float]:
        if self.allocation == "size":
            return [b.numel for b in blocks]
        if self.allocation == "sqrt-size":
            return [math.sqrt(b.numel) for b in blocks]
        missing = [b.name for b in blocks if b.name not in self.shares]
        if missing:
            raise ValueError(f"energy shares are missing parameters {missing[:3]} (the model's architecture differs "
                             f"from the one the shares were measured on)")
        return [self.shares[b.name] for b in blocks]

    def _build(self, blocks: list[Block]) -> None:
        budgets = allocate(self._weights(blocks), [b.numel for b in blocks], self.dim)
        if self.sketch == "khatri-rao":
            shapes = [(d, d) for d in budgets]
            sizes = budgets
        else:
            shapes = [factor_shape(d, b.rows, b.cols, self.shape) for d, b in zip(budgets, blocks)]
            # What the factorisations left over goes to the parameters that can take it (largest budgets first).
            left = sum(budgets) - sum(o * i for o, i in shapes)
            for j in sorted(range(len(blocks)), key=lambda j: -budgets[j]):
                if left <= 0:
                    break
                b, (o, i) = blocks[j], shapes[j]
                new = factor_shape(o * i + left, b.rows, b.cols, self.shape)
                if new[0] * new[1] > o * i:
                    left -= new[0] * new[1] - o * i
                    shapes[j] = new
            sizes = [o * i for o, i in shapes]
        offset, self.plan = 0, []
        for (o, i), size in zip(shapes, sizes):
            self.plan.append((offset, o, i))
            offset += size
        self.padding = self.dim - offset  # trailing zero columns (only when d exceeds what the factors can fill)
        self._plan_by_name = {b.name: plan for b, plan in zip(blocks, self.plan)}
        self._mats = {}

    def _plan_of(self, block: Block) -> tuple[int, int, int]:
        return self._plan_by_name[block.name]

    def _size(self, block: Block) -> int:
        _, o, i = self._plan_of(block)
        return o if self.sketch == "khatri-rao" else o * i

    def matrices(self, block: Block) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """fp32 CPU side matrices of parameter p; None for a side that is the identity.

        kronecker: (P_out [d_out, rows], P_in [d_in, cols]). khatri-rao: (U [d_p, rows] ~ N(0, 1/d_p),
        V [d_p, cols] ~ N(0, 1)); a side of size 1 is all ones (returned as a [d_p, 1] tensor).
        """
        if block.name not in self._mats:
            _, o, i = self._plan_of(block)
            name = block.name
            if self.sketch == "khatri-rao":
                u = (torch.full((o, 1), o**-0.5) if block.rows == 1 else
                     gaussian((o, block.rows), o**-0.5, self.seed, self.kind, self.sketch, name, "out"))
                v = (torch.ones(o, 1) if block.cols == 1 else
                     gaussian((o, block.cols), 1.0, self.seed, self.kind, self.sketch, name, "in"))
                self._mats[name] = (u, v)
            else:
                p_out = (None if o == block.rows else
                         gaussian((o, block.rows), o**-0.5, self.seed, self.kind, name, "out"))
                p_in = (None if i == block.cols else
                        gaussian((i, block.cols), i**-0.5, self.seed, self.kind, name, "in"))
                self._mats[name] = (p_out, p_in)
        return self._mats[block.name]

    @staticmethod
    def _left(f: Factor, pt: torch.Tensor | None, rows: int, dtype) -> torch.Tensor:
        """P a_t for every token, [T, d] (pt = Pᵀ [rows, d], None for the identity)."""
        if f.index:  # one-hot rows: P a_t is column a_t of P
            return torch.nn.functional.one_hot(f.a, rows).to(dtype) if pt is None else pt[f.a]
        return f.a if pt is None else f.a @ pt

    def _accumulate(self, block, fs, mb, out):
        offset, d_out, d_in = self._plan_of(block)
        p_out, p_in = self.matrices(block)
        dtype, device = fs[0].b.dtype, fs[0].b.device
        rows = mb.problems.to(out.device)
        if self.sketch == "khatri-rao":  # Σ_t (U a_t) ⊙ (V b_t) per problem, in column chunks to bound memory
            problem_of = onepass.token_problems(mb.segments, device)
            for f in fs:
                f, problem = _live_tokens(f, problem_of)  # tokens with a zero output gradient add nothing
                step = max(1, self.CHUNK // max(len(problem), 1))
                for c0 in range(0, d_out, step):
                    ut = p_out[c0:c0 + step].T.to(device=device, dtype=dtype)
                    prod = self._left(f, ut, block.rows, dtype) * (f.b @ p_in[c0:c0 + step].T.to(device, dtype))
                    sums = prod.new_zeros(len(mb.segments), ut.shape[1]).index_add_(0, problem, prod)
                    out[rows, offset + c0:offset + c0 + ut.shape[1]] += sums
            return
        pt_out = None if p_out is None else p_out.T.to(device=device, dtype=dtype)
        pt_in = None if p_in is None else p_in.T.to(device=device, dtype=dtype)
        projected = [Factor(self._left(f, pt_out, block.rows, dtype), f.b if pt_in is None else f.b @ pt_in)
                     for f in fs]  # per token (P_out a_t)(P_in b_t)ᵀ: per problem, G_i of these smaller factors
        total = onepass.materialised(projected, (d_out, d_in), mb.segments)
        out[rows, offset:offset + d_out * d_in] += total.reshape(len(mb.segments), -1)

    def _project_block(self, block, G, out):
        offset, d_out, d_in = self._plan_of(block)
        p_out, p_in = self.matrices(block)
        M = G.reshape(-1, block.rows, block.cols)
        if self.sketch == "khatri-rao":  # feature k = u_kᵀ G v_k
            out[:, offset:offset + d_out] += torch.einsum("nrk,kr->nk", M @ p_in.to(G).T, p_out.to(G))
            return
        if p_out is not None:
            M = p_out.to(G) @ M
        if p_in is not None:
            M = M @ p_in.to(G).T
        out[:, offset:offset + d_out * d_in] += M.reshape(G.shape[0], -1)

    def metadata(self) -> dict:
        meta = {**super().metadata(), "sketch": self.sketch, "allocation": self.allocation}
        if self.sketch == "kronecker":
            meta["shape"] = self.shape
        if self.shares:
            meta["shares"] = self.shares
        if self._blocks is not None:
            meta["blocks"] = [[b.name, *((o,) if self.sketch == "khatri-rao" else (o, i))]
                              for b, (_, o, i) in zip(self._blocks, self.plan)]
        return meta


# ---------------------------------------------------------------------------------------------- dense / sparse


class _BlockJL(Projector):
    """Shared machinery: a d × (coordinates of parameter p) Gaussian / Rademacher map, generated in fixed
    column blocks from (seed, kind, name, block index) and applied to materialised per-problem gradients."""

    distribution = "gaussian"

    def __init__(self, dim: int, seed: int = 0, budget: int = onepass.MATERIALISE_BUDGET):
        super().__init__(dim, seed)
        self.budget = budget  # floats of per-problem gradients materialised at once
        self.width = max(1, DENSE_BLOCK // self.dim)  # columns per generated block

    def _columns(self, block: Block) -> int:
        """How many coordinates of parameter p the map reads."""
        return block.numel

    def _select(self, block: Block, G: torch.Tensor) -> torch.Tensor:
        """The coordinates the map reads, [n, _columns(block)]."""
        return G

    def jl_block(self, block: Block, j: int) -> torch.Tensor:
        """Columns [j·width, (j+1)·width) of parameter p's d × columns map, fp32 CPU."""
        n = min(self.width, self._columns(block) - j * self.width)
        make = rademacher if self.distribution == "rademacher" else gaussian
        return make((self.dim, n), self.dim**-0.5, self.seed, self.kind, self.distribution, block.name, j)

    def _apply(self, block: Block, X: torch.Tensor, rows, out: torch.Tensor) -> None:
        """out[rows] += X @ R_pᵀ block by block (X: [m, columns])."""
        acc = torch.zeros(X.shape[0], self.dim, dtype=X.dtype, device=X.device)
        for j in range(-(-self._columns(block) // self.width)):
            cols = slice(j * self.width, (j + 1) * self.width)
            acc += X[:, cols] @ self.jl_block(block, j).to(device=X.device, dtype=X.dtype).T
        out[rows] += acc

    def features_and_flat(self, model, batch, vectors, micro_batch=256):
        """Per-problem coordinates are gathered across micro-batches (up to `GATHER_BUDGET` floats) and projected
        together, so each random block is generated once per gather instead of once per micro-batch; flat vectors
        ride along with the first gather."""
        blocks = self.bind(model)
        named = named_trainable(model)
        device = next(model.parameters()).device
        dtype = _feature_dtype(model)
        out = torch.zeros(batch.num_problems, self.dim, dtype=dtype, device=device)
        gathered: dict[str, list[tuple[torch.Tensor, object, torch.Tensor]]] = {b.name: [] for b in blocks}
        flat_out = None
        if vectors is not None:
            v = vectors.unsqueeze(0) if vectors.dim() == 1 else vectors
            flat_out = torch.zeros(v.shape[0], self.dim, dtype=dtype, device=v.device)
            for b in blocks:
                gathered[b.name].append((flat_out, slice(None), self._select(b, v[:, b.offset:b.offset + b.numel])))
        held = 0
        for mb in iter_factors(model, batch, micro_batch):
            for block, (_, p) in zip(blocks, named):
                fs = mb.factors.get(id(p))
                with exact_math(device):
                    for part, G in (onepass.per_problem_gradients(fs, (block.rows, block.cols), mb.segments,
                                                                  self.budget) if fs else ()):
                        X = self._select(block, G)
                        gathered[block.name].append((out, mb.problems[part].to(out.device), X))
                        held += X.numel()
            if held > GATHER_BUDGET:
                with exact_math(device):
                    self._project_gathered(blocks, gathered)
                held = 0
        with exact_math(device):
            self._project_gathered(blocks, gathered)
        if flat_out is not None and vectors.dim() == 1:
            flat_out = flat_out[0]
        return out, flat_out

    def _project_gathered(self, blocks: list[Block], gathered: dict) -> None:
        """target[rows] += X R_pᵀ for everything gathered, one pass over each parameter's random blocks."""
        for block in blocks:
            items = gathered[block.name]
            if not items:
                continue
            X = torch.cat([x.to(items[0][0].dtype) for _, _, x in items])
            acc = torch.zeros(X.shape[0], self.dim, dtype=X.dtype, device=X.device)
            self._apply(block, X, slice(None), acc)
            start = 0
            for target, rows, x in items:
                target[rows] += acc[start:start + x.shape[0]].to(device=target.device, dtype=target.dtype)
                start += x.shape[0]
            items.clear()

    def _project_block(self, block, G, out):
        self._apply(block, self._select(block, G), slice(None), out)

    def cost(self, model, n_problems: int) -> dict:
        """Random entries generated per features call and multiply-add GFLOP, for budgeting."""
        cols = sum(self._columns(b) for b in self.bind(model))
        return {"random_entries": self.dim * cols, "gflop": 2.0 * n_problems * self.dim * cols / 1e9}


class DenseProjector(_BlockJL):
    """Dense Rademacher (±1/√d) or Gaussian (N(0, 1/d)) projection of the whole flat gradient."""

    kind = "dense"

    def __init__(self, dim: int, seed: int = 0, distribution: str = "rademacher",
                 budget: int = onepass.MATERIALISE_BUDGET):
        super().__init__(dim, seed, budget)
        if distribution not in ("rademacher", "gaussian"):
            raise ValueError(f"unknown distribution '{distribution}' (choose from: rademacher, gaussian)")
        self.distribution = distribution

    def metadata(self) -> dict:
        return {**super().metadata(), "distribution": self.distribution, "block_width": self.width}


class SparseProjector(_BlockJL):
    """CROPI: a fixed random subset of coordinates (fraction of every parameter), then a random map to d.

    sketch "gaussian" (the paper's): a dense N(0, 1/d) map over the kept coordinates, generated block by block.
    sketch "countsketch": each kept coordinate c adds s(c)·g_c to feature h(c), with h uniform over [0, d) and
    s = ±1, both seeded by (seed, parameter name): E[⟨Sx, Sy⟩] = ⟨x, y⟩ with a variance no larger than the
    Gaussian map's, and O(kept coordinates) per problem instead of O(d · kept). Nothing to generate per call, so
    each micro-batch's per-problem gradients are sketched as soon as they are formed.
    """

    kind = "sparse"

    def __init__(self, dim: int, seed: int = 0, fraction: float = 0.1, budget: int = onepass.MATERIALISE_BUDGET,
                 sketch: str = "gaussian"):
        super().__init__(dim, seed, budget)
        if not 0 < fraction <= 1:
            raise ValueError(f"sparse projection: fraction must be in (0, 1] (got {fraction})")
        if sketch not in ("gaussian", "countsketch"):
            raise ValueError(f"unknown sparse sketch '{sketch}' (choose from: gaussian, countsketch)")
        self.fraction, self.sketch = float(fraction), sketch
        self._index: dict[str, tuple[torch.Tensor, float]] = {}
        self._hashes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _build(self, blocks):
        self._index, self._hashes = {}, {}

    def subset(self, block: Block) -> tuple[torch.Tensor, float]:
        """(sorted coordinates kept of parameter p, the scale √(n_p / k_p) that makes the selection unbiased)."""
        if block.name not in self._index:
            k = max(1, min(block.numel, round(self.fraction * block.numel)))
            perm = torch.randperm(block.numel, generator=_generator(self.seed, self.kind, "subset", block.name))
            self._index[block.name] = (perm[:k].sort().values, math.sqrt(block.numel / k))
        return self._index[block.name]

    def hashes(self, block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """CountSketch of parameter p's kept coordinates: (feature index h(c) [k], sign s(c) [k] fp32)."""
        if block.name not in self._hashes:
            k = self._columns(block)
            bucket = torch.randint(0, self.dim, (k,), generator=_generator(self.seed, self.kind, "bucket", block.name))
            sign = torch.randint(0, 2, (k,), generator=_generator(self.seed, self.kind, "sign", block.name))
            self._hashes[block.name] = (bucket, sign.float().mul_(2).sub_(1))
        return self._hashes[block.name]

    def _columns(self, block):
        return self.subset(block)[0].numel()

    def _select(self, block, G):
        idx, scale = self.subset(block)
        return G[:, idx.to(G.device)] * scale

    def _apply(self, block, X, rows, out):
        if self.sketch == "gaussian":
            return super()._apply(block, X, rows, out)
        bucket, sign = self.hashes(block)
        out[rows] += X.new_zeros(X.shape[0], self.dim).index_add_(1, bucket.to(X.device), X * sign.to(X))

    def features_and_flat(self, model, batch, vectors, micro_batch=256):
        if self.sketch == "gaussian":  # gather across micro-batches: each random block generated once per call
            return super().features_and_flat(model, batch, vectors, micro_batch)
        return Projector.features_and_flat(self, model, batch, vectors, micro_batch)

    def _accumulate(self, block, fs, mb, out):
        """A micro-batch's per-problem gradients of parameter p, sketched at once (countsketch)."""
        for part, G in onepass.per_problem_gradients(fs, (block.rows, block.cols), mb.segments, self.budget):
            self._apply(block, self._select(block, G), mb.problems[part].to(out.device), out)

    def cost(self, model, n_problems: int) -> dict:
        if self.sketch == "gaussian":
            return super().cost(model, n_problems)
        cols = sum(self._columns(b) for b in self.bind(model))  # one hash and one sign per kept coordinate
        return {"random_entries": 2 * cols, "gflop": 2.0 * n_problems * cols / 1e9}

    def metadata(self) -> dict:
        meta = {**super().metadata(), "fraction": self.fraction}
        if self.sketch == "gaussian":  # as before the countsketch option: stores made then still reopen
            return {**meta, "distribution": "gaussian", "block_width": self.width}
        return {**meta, "sketch": self.sketch}


# ---------------------------------------------------------------------------------------------- helpers


PROJECTORS: dict[str, type[Projector]] = {
    "factored": FactoredProjector,
    "dense": DenseProjector,
    "sparse": SparseProjector,
}


def get_projector(kind: str, dim: int, seed: int = 0, **kw) -> Projector:
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projection '{kind}' (choose from: {', '.join(PROJECTORS)})")
    return PROJECTORS[kind](dim, seed, **kw)


# Named projections (config `projection`, `gradalign bench fidelity --kinds`): name -> (kind, keyword arguments).
# "energy" variants need measured shares (`gradient_energy`); khatri-rao-energy is what the fidelity benchmark
# recommends (Spearman .98-.99, top-10% overlap 1.0 at d = 8192; benchmarks/README.md).
VARIANTS: dict[str, tuple[str, dict]] = {
    "factored": ("factored", {}),
    "factored-sqrt": ("factored", {"allocation": "sqrt-size"}),
    "factored-energy": ("factored", {"allocation": "energy"}),
    "khatri-rao": ("factored", {"sketch": "khatri-rao"}),
    "khatri-rao-energy": ("factored", {"sketch": "khatri-rao", "allocation": "energy"}),
    "sparse": ("sparse", {"fraction": 0.1}),
    "sparse-countsketch": ("sparse", {"fraction": 0.1, "sketch": "countsketch"}),
    "dense": ("dense", {"distribution": "rademacher"}),
    "dense-gaussian": ("dense", {"distribution": "gaussian"}),
}


def needs_energy(variant: str) -> bool:
    return VARIANTS[variant][1].get("allocation") == "energy"


def configured_projector(variant: str, dim: int, seed: int, measure_energy: Callable[[], dict[str, float]]
                         ) -> Projector:
    """The projection `variant`, with its energy split from `measure_energy()` (called only by the variants that
    allocate by energy: the caller decides where the split is measured, cached or read from)."""
    return named_projector(variant, dim, seed, shares=measure_energy() if needs_energy(variant) else None)


def named_projector(variant: str, dim: int, seed: int = 0, shares: dict[str, float] | None = None) -> Projector:
    """The projection called `variant` (see VARIANTS); energy variants take `shares` from `gradient_energy`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown projection '{variant}' (choose from: {', '.join(VARIANTS)})")
    kind, kw = VARIANTS[variant]
    kw = dict(kw)
    if needs_energy(variant):
        kw["shares"] = shares
    return get_projector(kind, dim, seed, **kw)


def gradient_energy(model, batch: SurrogateBatch, micro_batch: int = 256, power: float = 1.0,
                    group: ProcessGroup = SINGLE) -> dict[str, float]:
    """Per-parameter allocation weights from exact gradients of `batch` (e.g. the validation batch).

    e_p = mean over the batch's live problems of ‖G_{i,p}‖² (the parameter's share of per-problem gradient
    energy). Returns e_p^power by name: power 1 (what the energy projections use) gives each parameter
    dimensions in proportion to its energy; power 0.5 (d_p ∝ RMS norm) minimises Σ_p var_p / d_p. Sharded
    (`group`): each rank holds some of the problems; energies and problem counts are summed over ranks.
    """
    from .onepass import OnePassGradients
    named = named_trainable(model)
    energy = {n: 0.0 for n, _ in named}
    live = 0
    backend = OnePassGradients(micro_batch=micro_batch)
    for mb in iter_factors(model, batch, micro_batch):
        live += len(mb.segments)
        for name, p in named:
            fs = mb.factors.get(id(p))
            if not fs:
                continue
            energy[name] += float(backend.squared_norms(mb, fs, matrix_shape(p), batch.num_problems).sum())
    totals = group.sum(torch.tensor([*energy.values(), live], dtype=torch.float64))
    energy, live = dict(zip(energy, totals[:-1].tolist())), float(totals[-1])
    return {name: (energy[name] / max(live, 1)) ** power for name, _ in named}
