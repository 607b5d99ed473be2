"""Per-completion signals from the one-pass backward, against a plain autograd loop per completion.

For completion j of problem i, h_j = ∇ Σ_t log π(y_jt) and its surrogate term is g_j = -(1/N_i) A_j h_j (token
mean), so that g(x_i) = Σ_{j∈i} g_j. `problem_signals(..., per_completion=True)` must give ⟨g_j, d⟩ for every row
and direction, with Σ_{j∈i} ⟨g_j, d⟩ equal to the per-problem dot, and leave norms and dots as they are without it;
`completion_alignment` turns the terms back into d_j = ⟨h_j, d⟩.

The reference (`test_gradients.per_completion_grads`) feeds each completion alone, unpadded, and differentiates in
float64, so it shares no code with the scorer. Tolerance: as in test_gradients, fp32 matmuls over padded and
unpadded shapes differ by round-off; a dot is compared with an absolute bound REL·‖vector‖·‖d‖ (a dot can be near
0), REL = 1e-5 (measured ~5e-7; a wrong row or sign gives errors of order 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_gradients import ZERO_VARIANCE, Reference, make_model, make_rollouts, n_params
from test_onepass import random_rollouts

from gradalign.gradients import OnePassGradients
from gradalign.gradients.signals import NaiveGradients, completion_alignment
from gradalign.gradients.surrogate import SurrogateBatch

REL = 1e-5

BACKENDS = {
    "materialise": OnePassGradients(),
    "gram": OnePassGradients(force_gram=True),
    "micro-batch-1": OnePassGradients(micro_batch=1),
    "small-budget": OnePassGradients(budget=2048),  # a few rows' G_j at a time: problems split across runs
    "naive": NaiveGradients(),
}


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def setup(request):
    model = make_model(tie=request.param)
    rollouts, prompts, comps, rewards = make_rollouts(seed=3)
    return model, rollouts, Reference(model, prompts, comps, rewards, "none")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_completion_terms_against_autograd_per_completion(setup, backend, threads):
    model, rollouts, ref = setup
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sig = BACKENDS[backend].problem_signals(model, batch, dirs, per_completion=True)
        if backend != "naive":  # without norms: the terms alone, same numbers
            alone = BACKENDS[backend].problem_signals(model, batch, dirs, per_completion=True, with_norms=False)
            assert torch.isnan(alone.norms).all()
            torch.testing.assert_close(alone.completion_dots, sig.completion_dots, rtol=0, atol=0)
    finally:
        torch.set_num_threads(saved)
    d_ref = ref.G @ dirs.double().T  # [N, 2] ⟨h_j, d⟩
    bound_h = REL * ref.G.norm(dim=1, keepdim=True) * dirs.double().norm(dim=1)
    nu_a = (ref.adv / torch.cat([ref.ntok[torch.from_numpy(r)].sum().expand(len(r)) for r in ref.rows])).unsqueeze(1)
    terms_ref = -nu_a * d_ref
    assert torch.all((sig.completion_dots.double() - terms_ref).abs() <= nu_a.abs() * bound_h + 1e-12)
    d = completion_alignment(batch, sig.completion_dots)
    for i, rows in enumerate(ref.rows):
        rows = torch.from_numpy(rows)
        if ZERO_VARIANCE[i]:
            assert torch.all(sig.completion_dots[rows] == 0) and torch.isnan(d[rows]).all()
            continue
        assert torch.all((d[rows] - d_ref[rows]).abs() <= 10 * bound_h[rows])  # ÷ ν|A| ≥ 1/10 here: same bound
        # the terms add up to the problem's own dot
        g = ref.problem_grad(i)
        total = sig.completion_dots[rows].double().sum(0)
        assert torch.all((total - sig.dots[i].double()).abs() <= REL * g.norm() * dirs.double().norm(dim=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fresh_random_inputs_per_completion_equal_naive_and_leave_problem_signals_unchanged(seed):
    """Random group sizes, prompt and completion lengths (padding everywhere), both advantage scalings."""
    model = make_model(tie=bool(seed % 2), seed=200 + seed)
    rollouts = random_rollouts(seed + 10, vocab=model.config.vocab_size, n_problems=10)
    batch = SurrogateBatch(rollouts, rollouts.advantages("group" if seed % 2 else "none"))
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(seed))
    naive = NaiveGradients().problem_signals(model, batch, dirs, per_completion=True)
    plain = OnePassGradients(micro_batch=12).problem_signals(model, batch, dirs)
    fast = OnePassGradients(micro_batch=12).problem_signals(model, batch, dirs, per_completion=True)
    assert fast.completion_dots.shape == (rollouts.group.numel(), 2)
    np.testing.assert_allclose(fast.norms.numpy(), plain.norms.numpy(), rtol=REL, atol=1e-9)
    scale = (naive.norms[:, None] * dirs.norm(dim=1)[None, :]).numpy()
    assert np.all(np.abs((fast.dots - plain.dots).numpy()) <= REL * scale + 1e-12)
    row_scale = scale[rollouts.group.numpy()]  # a term is at most its problem's ‖g‖‖d‖ times a few
    assert np.all(np.abs((fast.completion_dots - naive.completion_dots).numpy()) <= 10 * REL * row_scale + 1e-12)
    sums = torch.zeros(batch.num_problems, 2, dtype=torch.float64).index_add_(
        0, rollouts.group, fast.completion_dots.double())
    assert np.all(np.abs((sums - fast.dots.double()).numpy()) <= REL * scale + 1e-12)


def test_completion_alignment_refuses_an_off_policy_surrogate():
    rollouts = make_rollouts(seed=3)[0]
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"), behaviour_logps=torch.zeros_like(rollouts.sample_logps))
    with pytest.raises(ValueError, match="on-policy"):
        completion_alignment(batch, torch.zeros(rollouts.group.numel(), 1))
