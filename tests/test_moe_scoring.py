"""One-pass scoring of a mixture-of-experts policy, against a plain float64 autograd loop.

A Qwen3-MoE block keeps its experts as fused 3-D parameters ([E, 2I, H], [E, H, I]) and its router outside any
nn.Linear, so the one-pass factorisation cannot cover them: `OnePassGradients.problem_signals` must warn once and
score the model with the naive per-problem backward, exactly. A dense model must not take that fallback.

The reference differentiates `weighted_surrogate` once per problem (and once per completion row) with
`torch.autograd.grad` in float64 and flattens the gradients itself. Tolerance: the model, the surrogate and the
scorer's sums are all float64, and `ProblemSignals` hands its results out in fp32, so the error is that final cast
(half an fp32 ulp of the value, eps/2 relative, eps = 1.19e-7) plus float64 round-off of the dot over P ~ 2e4 terms
(worst case P·eps64·‖g‖‖d‖ ~ 2.5e-12·‖g‖‖d‖). Bounds: norms rtol = eps (twice the cast), dots
|Δ| ≤ eps·|ref| + 1e-11·‖g‖‖d‖ (a dot can be near 0); measured <= 0.48 of either bound over seeds 0-5. Leaving out
the experts' gradient (~1.3% of ‖g‖ here) moves the norms by >= 440 times their bound and the dots by >= 1.6e4
times theirs; leaving out the router's moves the dots by >= 2200 times their bound.
"""

from __future__ import annotations

import logging

import pytest
import torch
from test_onepass import random_rollouts
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from gradalign.gradients import onepass
from gradalign.gradients.onepass import ActivationCapture, OnePassGradients, iter_factors, unsupported_parameters
from gradalign.gradients.surrogate import SurrogateBatch, weighted_surrogate
from gradalign.policy.tiny import build_tiny_model, build_tokenizer

EPS32 = torch.finfo(torch.float32).eps
DOT_FLOOR = 1e-11  # float64 round-off of a P-term dot, relative to ‖g‖‖d‖ (module docstring)
LOGGER = "gradalign.gradients.onepass"
TOKENIZER = build_tokenizer()


def tiny_moe(seed: int) -> Qwen3MoeForCausalLM:
    cfg = Qwen3MoeConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                         pad_token_id=TOKENIZER.pad_token_id, bos_token_id=TOKENIZER.bos_token_id,
                         eos_token_id=TOKENIZER.eos_token_id, tie_word_embeddings=False,
                         experts_implementation="eager")  # the default grouped_mm kernel has no float64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen3MoeForCausalLM(cfg).double().eval()


def tiny_dense(seed: int):
    return build_tiny_model(TOKENIZER, seed=seed, hidden=32, layers=2, intermediate=64).double().eval()


def make_batch(model, seed: int, n_problems: int = 5) -> SurrogateBatch:
    rollouts = random_rollouts(seed, vocab=model.config.vocab_size, n_problems=n_problems)
    return SurrogateBatch(rollouts, rollouts.advantages("group" if seed % 2 else "none"))


def reference_grad(model, batch: SurrogateBatch, rows: torch.Tensor) -> torch.Tensor:
    """Flat float64 gradient of the surrogate of `rows` (w = 1), in `model.parameters()` order."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = weighted_surrogate(model, batch, torch.ones(batch.num_problems), rows)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def directions_for(model, seed: int) -> torch.Tensor:
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def assert_dots_close(actual: torch.Tensor, ref: torch.Tensor, g_norm: torch.Tensor, dirs: torch.Tensor) -> None:
    bound = EPS32 * ref.abs() + DOT_FLOOR * g_norm * dirs.norm(dim=1)
    assert torch.all((actual.double() - ref).abs() <= bound), (actual, ref)


def check_against_reference(model, batch: SurrogateBatch, dirs: torch.Tensor, backend: OnePassGradients) -> None:
    """Norms, dots and per-completion dots of `backend` equal the float64 autograd loop's."""
    sig = backend.problem_signals(model, batch, dirs)
    rows_sig = backend.problem_signals(model, batch, dirs, per_completion=True)
    live = set(batch.live_problems())
    assert len(live) >= 3  # enough problems with a gradient to compare
    for i, rows in enumerate(batch.rows_by_problem()):
        g = reference_grad(model, batch, rows)
        if i not in live:  # zero-variance group: exactly zero, no backward taken
            assert g.abs().max() == 0 and sig.norms[i] == 0 and torch.all(rows_sig.completion_dots[rows] == 0)
            continue
        for s in (sig, rows_sig):
            torch.testing.assert_close(s.norms[i].double(), g.norm(), rtol=EPS32, atol=0)
            assert_dots_close(s.dots[i], dirs @ g, g.norm(), dirs)
        for j in rows:
            g_j = reference_grad(model, batch, j.reshape(1))
            assert_dots_close(rows_sig.completion_dots[j], dirs @ g_j, g_j.norm(), dirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moe_scores_equal_float64_autograd_via_the_naive_fallback(seed, caplog):
    model = tiny_moe(seed)
    names = unsupported_parameters(model)
    assert "model.layers.0.mlp.experts.gate_up_proj" in names and "model.layers.1.mlp.gate.weight" in names
    batch, dirs = make_batch(model, seed), directions_for(model, 10 + seed)
    backend = OnePassGradients(micro_batch=8)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check_against_reference(model, batch, dirs, backend)
        backend.mean_unit_gradient(model, batch)  # calls problem_signals again: still no second warning
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "experts.gate_up_proj" in message and "naive per-problem backward" in message


def test_mean_unit_gradient_of_moe_against_float64_autograd():
    model = tiny_moe(3)
    batch = make_batch(model, 3)
    unit = [g / g.norm() for g in (reference_grad(model, batch, r) for r in batch.rows_by_problem()) if g.norm() > 0]
    expected = torch.stack(unit).mean(0)
    got = OnePassGradients().mean_unit_gradient(model, batch).double()
    # the norms behind the weights are fp32 (relative error <= eps/2 each): the mean moves by <= eps relative
    assert (got - expected).norm() <= 2 * EPS32 * expected.norm()


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_model_keeps_the_one_pass_path(seed, caplog, monkeypatch):
    model = tiny_dense(seed)
    assert unsupported_parameters(model) == []

    def no_fallback(*args, **kwargs):
        raise AssertionError("a dense model took the naive fallback")

    monkeypatch.setattr(OnePassGradients, "fallback", no_fallback)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check_against_reference(model, make_batch(model, seed), directions_for(model, 20 + seed), OnePassGradients())
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_projections_and_capture_still_refuse_moe_saying_what_to_use():
    model = tiny_moe(0)
    batch = make_batch(model, 0, n_problems=2)
    with pytest.raises(NotImplementedError, match=r"experts\.gate_up_proj.*gradalign, gradalign-z"):
        next(iter_factors(model, batch))
    with pytest.raises(NotImplementedError, match=r"experts\.gate_up_proj.*gradient_backend: naive"):
        ActivationCapture(model)
    assert not any(m._forward_hooks for m in model.modules())  # the refusal leaves no hook behind


def test_sharded_moe_is_refused_in_one_line(monkeypatch):
    """FSDP shards cannot go through the naive loop (it reads whole gradients); stand in for a sharded model."""
    model = tiny_moe(0)
    monkeypatch.setattr(onepass, "fsdp_sharded", lambda m: True)
    with pytest.raises(NotImplementedError, match="FSDP-sharded") as err:
        OnePassGradients().problem_signals(model, make_batch(model, 0, n_problems=2), torch.zeros(0, 0))
    assert "\n" not in str(err.value)
