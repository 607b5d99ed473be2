"""Projected gradient features (`gradalign.gradients.projections`) against independent computations.

What is independent of what:
  * the per-problem gradients g_i come from `test_gradients.Reference`: per-completion autograd in float64,
    unpadded, never touching the library's surrogate, hooks or factors;
  * the explicit projection matrix R [d, P] is assembled here from the projector's raw random matrices with a
    linear-algebra identity, not with any projector code path: Kronecker blocks R_p = P_out ⊗ P_in
    (`torch.kron`, identity on a side kept whole), Khatri-Rao rows u_k ⊗ v_k, dense blocks concatenated
    column-block by column-block, sparse = JL columns scattered onto the kept coordinates × √(n_p / k_p);
  * `features` (hooks → per-token factors → projected factors, never the flat gradient) must then equal R g_i,
    and `project_flat` (the flat path: reshape each parameter's slice, no factors) must equal R v too.
The random matrices themselves are checked for their distribution, determinism (fresh instances, fresh
models, a subprocess with another hash seed) and unbiasedness of inner products (a z-test over many seeds).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gradients import ZERO_VARIANCE, Reference, make_model, make_rollouts, n_params
from test_onepass import random_rollouts

from gradalign.gradients import onepass
from gradalign.gradients.projections import (DenseProjector, FactoredProjector, SparseProjector, allocate,
                                             derive_seed, factor_shape, get_projector, gradient_energy, layout)
from gradalign.gradients.signals import NaiveGradients, flat_grad, trainable
from gradalign.gradients.surrogate import SurrogateBatch, weighted_surrogate

# (kind, keyword arguments) of every projection under test
CASES = {
    "factored": ("factored", {}),
    "factored-aspect": ("factored", {"shape": "aspect"}),
    "khatri-rao": ("factored", {"sketch": "khatri-rao"}),
    "dense-rademacher": ("dense", {"distribution": "rademacher"}),
    "dense-gaussian": ("dense", {"distribution": "gaussian"}),
    "sparse": ("sparse", {"fraction": 0.1}),
    "sparse-half": ("sparse", {"fraction": 0.5}),
    "sparse-countsketch": ("sparse", {"fraction": 0.1, "sketch": "countsketch"}),
    "sparse-countsketch-half": ("sparse", {"fraction": 0.5, "sketch": "countsketch"}),
}
REL = 1e-5  # fp32 logits in the library; everything else float64 here


def explicit_R(projector, model) -> torch.Tensor:
    """The projection as an explicit float64 [dim, P] matrix, from the projector's raw random matrices."""
    blocks = projector.bind(model)
    P = blocks[-1].offset + blocks[-1].numel
    R = torch.zeros(projector.dim, P, dtype=torch.float64)
    for b in blocks:
        cols = slice(b.offset, b.offset + b.numel)
        if isinstance(projector, FactoredProjector):
            off, d_out, d_in = projector._plan_of(b)
            p_out, p_in = projector.matrices(b)
            if projector.sketch == "khatri-rao":
                u, v = p_out.double(), p_in.double()
                R[off:off + d_out, cols] = (u[:, :, None] * v[:, None, :]).reshape(d_out, -1)
            else:
                left = torch.eye(b.rows, dtype=torch.float64) if p_out is None else p_out.double()
                right = torch.eye(b.cols, dtype=torch.float64) if p_in is None else p_in.double()
                R[off:off + d_out * d_in, cols] = torch.kron(left, right)
        elif isinstance(projector, SparseProjector) and projector.sketch == "countsketch":
            idx, scale = projector.subset(b)
            bucket, sign = projector.hashes(b)
            assert bucket.min() >= 0 and bucket.max() < projector.dim and set(sign.tolist()) <= {-1.0, 1.0}
            block = torch.zeros(projector.dim, b.numel, dtype=torch.float64)
            block[bucket, idx] = sign.double() * scale  # one non-zero per kept coordinate: ±√(n_p / k_p)
            R[:, cols] = block
        else:
            width = projector.width
            n_blocks = -(-projector._columns(b) // width)
            jl = torch.cat([projector.jl_block(b, j) for j in range(n_blocks)], dim=1).double()
            if isinstance(projector, SparseProjector):
                idx, scale = projector.subset(b)
                assert idx.numel() == max(1, round(projector.fraction * b.numel))
                assert torch.all(idx[1:] > idx[:-1])  # sorted, no repeats
                block = torch.zeros(projector.dim, b.numel, dtype=torch.float64)
                block[:, idx] = jl * scale
                R[:, cols] = block
            else:
                R[:, cols] = jl
    return R


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def setup(request):
    model = make_model(tie=request.param, dtype=torch.float64, seed=4)
    rollouts, prompts, comps, rewards = make_rollouts(seed=5)
    ref = Reference(model, prompts, comps, rewards, "none")
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    return model, batch, torch.stack(ref.problem_grads())


@pytest.mark.parametrize("case", list(CASES))
def test_features_equal_explicit_R_times_exact_gradients(setup, case):
    model, batch, G = setup
    kind, kw = CASES[case]
    projector = get_projector(kind, 96, seed=7, **kw)
    feats = projector.features(model, batch)
    R = explicit_R(projector, model)
    expected = G @ R.T
    assert feats.shape == (batch.num_problems, 96) and feats.dtype == torch.float64
    for i in range(batch.num_problems):
        if ZERO_VARIANCE[i]:
            assert torch.all(feats[i] == 0)
            continue
        err = (feats[i] - expected[i]).norm().item()
        assert err <= REL * expected[i].norm().item(), (case, i, err, expected[i].norm().item())
    # The flat path is R too: on the exact gradients and on unit vectors (columns of R).
    flat = projector.project_flat(model, G)
    assert (flat - expected).norm() <= 1e-12 * expected.norm()
    cols = torch.randperm(G.shape[1], generator=torch.Generator().manual_seed(0))[:64]
    units = torch.zeros(64, G.shape[1], dtype=torch.float64)
    units[torch.arange(64), cols] = 1
    assert torch.allclose(projector.project_flat(model, units).T, R[:, cols], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["factored", "khatri-rao", "dense-rademacher", "sparse", "sparse-countsketch"])
def test_fp32_model_varied_groups_and_micro_batches(case):
    """fp32 model, random group sizes (unequal token counts per problem), one problem per forward or all at once."""
    model = make_model(tie=False, seed=21)
    rollouts = random_rollouts(3, vocab=model.config.vocab_size, n_problems=10)
    batch = SurrogateBatch(rollouts, rollouts.advantages("group"))
    kind, kw = CASES[case]
    projector = get_projector(kind, 128, seed=1, **kw)
    R = explicit_R(projector, model)
    params = trainable(model)
    for micro_batch in (1, 256):
        feats = projector.features(model, batch, micro_batch=micro_batch)
        assert feats.dtype == torch.float32
        for i in range(batch.num_problems):
            rows = batch.rows_of(i)
            if batch.advantages[rows].abs().sum() == 0:
                assert torch.all(feats[i] == 0)
                continue
            for p in params:
                p.grad = None
            weighted_surrogate(model, batch, torch.ones(batch.num_problems), rows).backward()
            g = flat_grad(params).double()
            expected = R @ g
            assert (feats[i].double() - expected).norm() <= 1e-4 * expected.norm()
    for p in params:
        p.grad = None


def test_equal_group_sizes_take_the_batched_path():
    """Equal token counts per problem use one batched matmul; same numbers as explicit R g."""
    from gradalign.bench.scoring import fabricate_rollouts
    from gradalign.policy.tiny import build_tiny_model, build_tokenizer
    tok = build_tokenizer()
    model = build_tiny_model(tok, hidden=32, layers=1, heads=2, intermediate=48).double()
    rollouts = fabricate_rollouts(tok, 6, 3, seed=4)
    batch = SurrogateBatch(rollouts, rollouts.advantages())
    for kind, kw in (CASES["factored"], CASES["khatri-rao"]):
        projector = get_projector(kind, 80, seed=2, **kw)
        naive = NaiveGradients()
        feats = projector.features(model, batch)
        R = explicit_R(projector, model)
        dirs = R.to(torch.float64)  # ⟨g_i, R_k⟩ for each row k of R, computed by the naive per-problem loop
        sig = naive.problem_signals(model, batch, dirs)
        # float64 model: the fp32 logits cast and fp32 outputs bound the agreement to a few fp32 ulps (1.19e-7);
        # 1e-6 ≈ 8 ulps, atol on the ‖g‖ scale for features near 0 (measured 5% of the tolerance)
        assert torch.allclose(feats, sig.dots.double(), rtol=1e-6, atol=1e-9 * sig.norms.max().item())


# ---------------------------------------------------------------------------------------------- never materialise


def test_factored_never_materialises_per_problem_gradients(setup, monkeypatch):
    model, batch, G = setup

    full_shapes = {(b.rows, b.cols) for b in layout(model)}
    materialised = onepass.materialised

    def refuse(factors, shape, segments):  # the Kronecker sums per problem are [d_out, d_in], never a parameter's
        if tuple(shape) in full_shapes:
            raise AssertionError("per-problem gradient materialised")
        return materialised(factors, shape, segments)

    monkeypatch.setattr(onepass, "materialised", refuse)
    monkeypatch.setattr(onepass, "per_problem_gradients", lambda *a, **k: refuse(None, next(iter(full_shapes)), None))
    for sketch in ("kronecker", "khatri-rao"):
        feats = FactoredProjector(64, seed=0, sketch=sketch).features(model, batch)
        assert feats.abs().sum() > 0
    with pytest.raises(AssertionError, match="materialised"):  # the patch does bite where G_i is formed
        DenseProjector(64, seed=0).features(model, batch)


# ---------------------------------------------------------------------------------------------- determinism


def test_deterministic_across_instances_models_and_names():
    model = make_model(tie=True, seed=0)
    rollouts = random_rollouts(1, vocab=model.config.vocab_size, n_problems=6)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    other = make_model(tie=True, seed=99)  # same architecture, other weights and other parameter ids
    twin = copy.deepcopy(model)
    v = torch.randn(n_params(model), generator=torch.Generator().manual_seed(3))
    for case, (kind, kw) in CASES.items():
        a, b = get_projector(kind, 72, seed=5, **kw), get_projector(kind, 72, seed=5, **kw)
        assert torch.equal(a.features(model, batch), b.features(model, batch)), case
        assert torch.equal(a.features(model, batch), b.features(twin, batch)), case  # ids differ, names do not
        assert torch.equal(a.project_flat(model, v), b.project_flat(other, v)), case
        c = get_projector(kind, 72, seed=6, **kw)
        assert not torch.equal(a.project_flat(model, v), c.project_flat(model, v)), case
        assert a.metadata() == b.metadata() and a.metadata()["seed"] == 5 and a.metadata()["kind"] == kind


def every_projection() -> dict[str, np.ndarray]:
    """Every projector kind's features of one batch and projection of one flat vector (fixed seeds)."""
    model = make_model(tie=False, seed=8)
    rollouts = random_rollouts(2, vocab=model.config.vocab_size, n_problems=5)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    v = torch.randn(n_params(model), generator=torch.Generator().manual_seed(1))
    out = {}
    for kind, kw in [("factored", {}), ("factored", {"sketch": "khatri-rao"}), ("dense", {}), ("sparse", {}),
                     ("sparse", {"sketch": "countsketch"})]:
        pr = get_projector(kind, 64, seed=11, **kw)
        key = kind + kw.get("sketch", "")
        out[key + "_features"] = pr.features(model, batch).numpy()
        out[key + "_flat"] = pr.project_flat(model, v).numpy()
    return out


def test_bit_identical_in_another_process(tmp_path):
    """A fresh interpreter with another PYTHONHASHSEED than this one computes bit-identical matrices and features."""
    script = textwrap.dedent("""
        import sys, numpy as np, torch
        torch.set_num_threads(int(sys.argv[3]))  # this process's count: the reduction order depends on it
        sys.path.insert(0, sys.argv[1])
        from test_projections import every_projection
        np.savez(sys.argv[2], **every_projection())
    """)
    out = tmp_path / "there.npz"
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # this process: random, or the one set
    subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(out), str(torch.get_num_threads())],
                   check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=120)
    there, here = np.load(out), every_projection()
    assert sorted(there.files) == sorted(here) and len(here) == 10
    for key, value in here.items():
        assert np.array_equal(there[key], value), key


def test_derived_seeds_are_stable_constants():
    """The seed derivation is a fixed function (sha256), not Python's salted hash: pinned values."""
    assert derive_seed(0, "dense", "w", 0) == derive_seed(0, "dense", "w", 0)
    assert derive_seed(0, "dense", "w", 0) != derive_seed(1, "dense", "w", 0)
    assert derive_seed(0, "dense", "w", 0) != derive_seed(0, "dense", "w", 1)
    import hashlib
    expected = int.from_bytes(hashlib.sha256(json.dumps([3, "a", "b"]).encode()).digest()[:8], "little") & (2**63 - 1)
    assert derive_seed(3, "a", "b") == expected


# ---------------------------------------------------------------------------------------------- statistics


@pytest.fixture(scope="module")
def exact_grads():
    model = make_model(tie=True, dtype=torch.float64, seed=4)
    rollouts, prompts, comps, rewards = make_rollouts(seed=5)
    G = torch.stack(Reference(model, prompts, comps, rewards, "group").problem_grads())
    return model, G[[i for i in range(len(ZERO_VARIANCE)) if not ZERO_VARIANCE[i]]]


@pytest.mark.parametrize("case", ["factored", "khatri-rao", "dense-rademacher", "dense-gaussian", "sparse",
                                  "sparse-countsketch"])
def test_inner_products_are_unbiased(exact_grads, case):
    """Over S seeds, mean ⟨φ_i, φ_j⟩ matches ⟨g_i, g_j⟩ within 6 standard errors and 15% of ‖g_i‖‖g_j‖."""
    model, G = exact_grads
    target = (G @ G.T).numpy()
    scale = np.outer(G.norm(dim=1).numpy(), G.norm(dim=1).numpy())
    kind, kw = CASES[case]
    S = 200
    samples = np.stack([(lambda F: (F @ F.T).numpy())(get_projector(kind, 128, seed=s, **kw).project_flat(model, G))
                        for s in range(S)])
    mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(S)
    z = np.abs(mean - target) / np.maximum(se, 1e-12 * scale)
    assert z.max() < 6, (case, z.max())
    assert np.all(np.abs(mean - target) <= 0.15 * scale), (case, np.abs(mean - target) / scale)


def test_random_matrices_have_the_stated_distribution():
    model = make_model(tie=False, seed=1)
    blocks = layout(model)
    big = max(blocks, key=lambda b: b.numel)
    d = 512
    rad = DenseProjector(d, seed=3, distribution="rademacher")
    rad.bind(model)
    block = rad.jl_block(big, 0)
    step = torch.tensor(d**-0.5, dtype=torch.float32).item()
    assert set(torch.unique(block).tolist()) == {-step, step}
    assert abs(block.mean().item()) < 5 * d**-0.5 / np.sqrt(block.numel())
    gau = DenseProjector(d, seed=3, distribution="gaussian")
    gau.bind(model)
    g = gau.jl_block(big, 0)
    assert abs(g.std().item() * d**0.5 - 1) < 0.01
    fac = FactoredProjector(4096, seed=0)
    fac.bind(model)
    p_out, p_in = fac.matrices(big)
    for m in (p_out, p_in):
        if m is not None:
            assert abs(m.std().item() * m.shape[0]**0.5 - 1) < 0.05


# ---------------------------------------------------------------------------------------------- allocation


def test_allocation_is_exact_and_bounded():
    for weights, caps, total in [([1, 1, 1], [10, 10, 10], 7), ([100, 1, 1], [5, 50, 50], 40),
                                 ([0, 0, 1], [3, 3, 3], 6), ([5, 3, 2, 1], [1, 100, 100, 100], 4)]:
        d = allocate(weights, caps, total)
        assert sum(d) == min(total, sum(caps)) and all(1 <= x <= c for x, c in zip(d, caps)), (weights, d)
    assert allocate([1, 3], [100, 100], 40) == [10, 30]
    with pytest.raises(ValueError, match="smaller than the number of parameter tensors"):
        allocate([1, 1, 1], [5, 5, 5], 2)
    assert factor_shape(64, 100, 100) == (8, 8)
    assert factor_shape(64, 4, 100) == (4, 16)  # d_out capped by the rows
    assert factor_shape(7, 20, 1) == (7, 1)


@pytest.mark.parametrize("sketch", ["kronecker", "khatri-rao"])
@pytest.mark.parametrize("dim", [27, 100, 1000, 10**7])
def test_factored_plan_fills_the_dimension(sketch, dim):
    model = make_model(tie=True, seed=0)
    projector = FactoredProjector(dim, sketch=sketch)
    blocks = projector.bind(model)
    used = sum(o if sketch == "khatri-rao" else o * i for _, o, i in projector.plan)
    assert used + projector.padding == dim
    assert projector.padding == max(0, dim - n_params(model))  # only a dim beyond the model's size is padded
    for b, (_, o, i) in zip(blocks, projector.plan):
        assert 1 <= o and 1 <= i
        if sketch == "kronecker":
            assert o <= b.rows and i <= b.cols
    meta = projector.metadata()
    assert meta["dim"] == dim and len(meta["blocks"]) == len(blocks)


def test_energy_allocation():
    model = make_model(tie=False, seed=2)
    rollouts = random_rollouts(4, vocab=model.config.vocab_size, n_problems=8)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    shares = gradient_energy(model, batch)
    assert set(shares) == {b.name for b in layout(model)} and all(v >= 0 for v in shares.values())
    # Σ_p mean_i ‖G_ip‖² = mean_i ‖g_i‖²: the shares are an exact decomposition of the gradient energy
    sig = NaiveGradients().problem_signals(model, batch, torch.zeros(0, 0))
    live = sig.norms > 0
    # fp32 squared norms summed over the model's parameter blocks: ~P·eps worst case for P ~ 1e3 blocks·entries
    # at fp32 eps 1.19e-7 is below 1e-4; a missing or double-counted block changes the sum by >= 1e-2
    assert sum(shares.values()) == pytest.approx(float((sig.norms[live].double() ** 2).mean()), rel=1e-4)
    projector = FactoredProjector(500, allocation="energy", shares=shares)
    projector.bind(model)
    assert projector.metadata()["shares"] == shares
    big = max(shares, key=shares.get)
    small = min(shares, key=shares.get)
    sizes = {b: o * i for b, (_, o, i) in zip([b.name for b in layout(model)], projector.plan)}
    assert sizes[big] > sizes[small]
    with pytest.raises(ValueError, match="missing parameters"):
        FactoredProjector(500, allocation="energy", shares={"x": 1.0}).bind(model)
    with pytest.raises(ValueError, match="needs shares"):
        FactoredProjector(500, allocation="energy")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown projection"):
        get_projector("fourier", 8)
    with pytest.raises(ValueError, match=">= 1"):
        DenseProjector(0)
    with pytest.raises(ValueError, match="fraction"):
        SparseProjector(8, fraction=0)
    with pytest.raises(ValueError, match="rademacher, gaussian"):
        DenseProjector(8, distribution="uniform")
    with pytest.raises(ValueError, match="unknown sparse sketch 'srht' \\(choose from: gaussian, countsketch\\)"):
        SparseProjector(8, sketch="srht")
    model = make_model(tie=True, seed=0)
    with pytest.raises(ValueError, match="coordinates"):
        DenseProjector(8).project_flat(model, torch.zeros(5))


@pytest.mark.parametrize("case", ["dense-rademacher", "sparse"])
@pytest.mark.parametrize("budget", [2**27, 1])  # everything in one gather, or a flush after every micro-batch
def test_gathered_features_and_flat_equal_explicit_R(setup, case, budget, monkeypatch):
    """Dense / sparse maps gather coordinates across micro-batches before projecting; flat vectors ride along."""
    from gradalign.gradients import projections
    monkeypatch.setattr(projections, "GATHER_BUDGET", budget)
    model, batch, G = setup
    kind, kw = CASES[case]
    projector = get_projector(kind, 64, seed=3, **kw)
    R = explicit_R(projector, model)
    vectors = torch.randn(2, G.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    feats, flat = projector.features_and_flat(model, batch, vectors, micro_batch=1)
    assert (feats - G @ R.T).norm() <= REL * (G @ R.T).norm()
    assert (flat - vectors @ R.T).norm() <= 1e-12 * (vectors @ R.T).norm()
    _, single = projector.features_and_flat(model, batch, vectors[0], micro_batch=1)
    assert single.shape == (64,) and torch.allclose(single, flat[0], rtol=0, atol=1e-12)
