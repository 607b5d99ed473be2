"""The forward-mode scorer (`gradient_backend: forward`, the default's through `auto`) against independent
computations: per-completion terms ⟨g_j, d⟩ against the autograd-per-completion reference of test_gradients (each
completion fed alone, unpadded, float64), and against the naive loop on fresh random inputs (padding, group sizes
2-6, micro-batches that split and join groups, off-policy, KL, sequence-mean and temperature surrogates, LoRA,
a scored subset). Its validation direction (prompts shared, one backward) against the naive pooled gradient.

Tolerance as in test_completion_signals: fp32 matmuls over different shapes (a prompt run once and cached against
full rows) differ by round-off, so a term is compared with an absolute bound REL·‖h_j‖·‖d‖ (REL = 1e-5; measured
~1e-6 relative here; a wrong row, sign, position or mask gives errors of order 1). Against the naive loop, whose
per-completion norms are not formed, the bound is 10·REL·‖g(x_i)‖·‖d‖ (a completion's term is a few times its
problem's at most), as in test_completion_signals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_gradients import ZERO_VARIANCE, Reference, make_model, make_rollouts, n_params
from test_onepass import random_rollouts

from gradalign.gradients import AutoGradients, ForwardGradients, OnePassGradients
from gradalign.gradients.forward import shared_prompt_logps
from gradalign.gradients.scope import scoring_scope
from gradalign.gradients.signals import NaiveGradients
from gradalign.gradients.surrogate import SurrogateBatch, completion_logps

REL = 1e-5


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("micro_batch", [1, 7, 256])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_terms_against_autograd_per_completion(tie, micro_batch, threads):
    model = make_model(tie=tie)
    rollouts, prompts, comps, rewards = make_rollouts(seed=3)
    ref = Reference(model, prompts, comps, rewards, "none")
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(5))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sig = ForwardGradients(micro_batch).problem_signals(model, batch, dirs, per_completion=True, with_norms=False)
    finally:
        torch.set_num_threads(saved)
    assert torch.isnan(sig.norms).all()
    d_ref = ref.G @ dirs.double().T  # [N, 2] ⟨h_j, d⟩, h_j = ∇ Σ_t log π(y_jt)
    bound = REL * ref.G.norm(dim=1, keepdim=True) * dirs.double().norm(dim=1)
    nu_a = (ref.adv / torch.cat([ref.ntok[torch.from_numpy(r)].sum().expand(len(r)) for r in ref.rows])).unsqueeze(1)
    assert torch.all((sig.completion_dots.double() + nu_a * d_ref).abs() <= nu_a.abs() * bound + 1e-12)
    for i, rows in enumerate(ref.rows):
        if ZERO_VARIANCE[i]:  # no signal: not run, exactly zero
            assert torch.all(sig.completion_dots[torch.from_numpy(rows)] == 0) and torch.all(sig.dots[i] == 0)
        g = ref.problem_grad(i)
        assert torch.all((sig.dots[i].double() - dirs.double() @ g).abs() <= REL * g.norm() * dirs.double().norm(dim=1))


def _naive_vs_forward(model, batch, dirs, backend=None):
    naive = NaiveGradients().problem_signals(model, batch, dirs, per_completion=True)
    fast = (backend or ForwardGradients(micro_batch=12)).problem_signals(model, batch, dirs, per_completion=True,
                                                                          with_norms=False)
    scale = (naive.norms[:, None] * dirs.norm(dim=1)[None, :]).double().numpy()
    assert (naive.norms > 0).sum() >= 4  # enough problems carry signal for the comparison to mean something
    assert np.all(np.abs((fast.dots - naive.dots).double().numpy()) <= REL * scale + 1e-12)
    row_scale = scale[batch.rollouts.group.numpy()]
    assert np.all(np.abs((fast.completion_dots - naive.completion_dots).double().numpy()) <= 10 * REL * row_scale + 1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fresh_random_inputs_equal_naive(seed):
    model = make_model(tie=bool(seed % 2), seed=300 + seed)
    rollouts = random_rollouts(seed + 20, vocab=model.config.vocab_size, n_problems=10)
    batch = SurrogateBatch(rollouts, rollouts.advantages("group" if seed % 2 else "none"))
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(seed))
    _naive_vs_forward(model, batch, dirs)


@pytest.mark.parametrize("variant", ["off-policy", "kl", "sequence-mean", "temperature"])
def test_every_surrogate_equals_naive(variant):
    """The coefficient of ∇ log π is read from the same `token_coefficients` as every backend: importance ratios
    and the KL term (which make every group live) and the aggregation follow the surrogate."""
    model = make_model(tie=False, seed=7)
    rollouts = random_rollouts(31, vocab=model.config.vocab_size, n_problems=8)
    g = torch.Generator().manual_seed(3)
    near = lambda: completion_logps(model, rollouts, torch.arange(rollouts.group.numel())).detach() \
        + 0.1 * torch.randn(rollouts.completion_ids.shape, generator=g)  # noqa: E731
    kw = {"off-policy": dict(behaviour_logps=near()), "kl": dict(reference_logps=near(), kl_beta=0.1),
          "sequence-mean": dict(aggregation="sequence-mean"), "temperature": dict(temperature=0.7)}[variant]
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"), **kw)
    _naive_vs_forward(model, batch, torch.randn(1, n_params(model), generator=g))


def test_a_lora_adapter_equals_naive():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(make_model(tie=True, seed=8), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                      target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():  # peft starts lora_B at 0, which would leave every lora_A gradient 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(1))
    model.eval()
    rollouts = random_rollouts(41, vocab=20, n_problems=8)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    _naive_vs_forward(model, batch, torch.randn(1, n_params(model), generator=torch.Generator().manual_seed(2)))


def test_a_scored_subset_equals_naive_in_the_same_scope():
    model = make_model(tie=True, seed=9)
    rollouts = random_rollouts(51, vocab=model.config.vocab_size, n_problems=8)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    with scoring_scope(model, ["last_blocks:1", "lm_head.*"]):
        _naive_vs_forward(model, batch, torch.randn(1, n_params(model), generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("micro_batch", [1, 9, 256])
def test_the_shared_prompt_direction_equals_naive(micro_batch):
    model = make_model(tie=False, seed=10)
    rollouts = random_rollouts(61, vocab=model.config.vocab_size, n_problems=9)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    expected = NaiveGradients().pooled_gradient(model, batch)
    got = ForwardGradients(micro_batch).pooled_gradient(model, batch)
    assert (got - expected).norm() <= REL * expected.norm()


def test_shared_prompt_log_probs_equal_full_rows():
    """Each prompt run once and cached gives the log-probs of the full rows (float64: no round-off to speak of,
    so 1e-9 would catch a position or mask off by one, which moves them by ~1e-2)."""
    model = make_model(tie=True, dtype=torch.float64, seed=11)
    rollouts = random_rollouts(71, vocab=model.config.vocab_size, n_problems=7)
    rows = torch.randperm(rollouts.group.numel(), generator=torch.Generator().manual_seed(0))[:15]
    with torch.no_grad():
        torch.testing.assert_close(shared_prompt_logps(model, rollouts, rows),
                                   completion_logps(model, rollouts, rows), rtol=0, atol=1e-9)


def test_norms_are_refused_in_one_line_and_auto_routes_them_to_onepass():
    model = make_model(tie=True, seed=12)
    rollouts = random_rollouts(81, vocab=model.config.vocab_size, n_problems=6)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    dirs = torch.randn(1, n_params(model), generator=torch.Generator().manual_seed(6))
    with pytest.raises(NotImplementedError, match="gradient_backend: onepass"):
        ForwardGradients().problem_signals(model, batch, dirs, per_completion=True)
    auto = AutoGradients(micro_batch=12)
    with_norms = auto.problem_signals(model, batch, dirs)
    torch.testing.assert_close(with_norms.norms, OnePassGradients(12).problem_signals(model, batch, dirs).norms)
    assert torch.isnan(auto.problem_signals(model, batch, dirs, per_completion=True, with_norms=False).norms).all()
    _naive_vs_forward(model, batch, dirs, backend=auto)


def test_a_mixture_of_experts_policy_equals_naive_and_falls_back_where_forward_mode_is_missing(caplog):
    """Forward mode covers any module (fused 3-D expert weights, a router outside nn.Linear): the eager experts
    are scored by `forward` exactly. The grouped-matmul kernel has no forward mode in PyTorch: `auto` then scores
    the model with onepass, saying so once, with the same numbers (its own tests check onepass on MoE)."""
    from test_moe_scoring import tiny_moe
    model = tiny_moe(seed=1).float()
    rollouts = random_rollouts(91, vocab=model.config.vocab_size, n_problems=6)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    dirs = torch.randn(1, n_params(model), generator=torch.Generator().manual_seed(7))
    _naive_vs_forward(model, batch, dirs)
    model.config._experts_implementation = "grouped_mm"
    for m in model.modules():  # the experts read the implementation from their own config
        if getattr(m, "config", None) is not None:
            m.config._experts_implementation = "grouped_mm"
    auto = AutoGradients(micro_batch=12)
    with caplog.at_level("WARNING", logger="gradalign.gradients.forward"):
        got = auto.problem_signals(model, batch, dirs, per_completion=True, with_norms=False)
        again = auto.problem_signals(model, batch, dirs, per_completion=True, with_norms=False)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1 and "onepass" in caplog.text
    expected = OnePassGradients(12).problem_signals(model, batch, dirs, per_completion=True, with_norms=False)
    torch.testing.assert_close(got.completion_dots, expected.completion_dots, rtol=0, atol=0)
    torch.testing.assert_close(again.completion_dots, expected.completion_dots, rtol=0, atol=0)


def test_the_ledger_counts_each_prompt_once_where_prompts_are_shared():
    model = make_model(tie=True, seed=13)
    rollouts = random_rollouts(101, vocab=model.config.vocab_size, n_problems=7)
    rows = [torch.nonzero(rollouts.group == i).squeeze(1) for i in range(rollouts.num_problems)]
    by_hand = sum(int(rollouts.prompt_mask[r[0]].sum()) for r in rows) + int(rollouts.completion_mask.sum())
    assert rollouts.shared_prompt_tokens == by_hand < rollouts.tokens
    auto = AutoGradients()
    assert auto.tokens_read(model, rollouts) == by_hand  # the validation direction's backward
    assert auto.tokens_read(model, rollouts, norms=True) == rollouts.tokens  # a cosine: onepass over full rows
