"""One-pass exact scoring against independent computations: per-completion autograd (float64 reference) and
the naive per-problem loop, on fresh random inputs with padding, variable lengths, varied group sizes,
tied and untied heads, both reduction paths (materialised G_i and Gram) and any micro-batch size."""

import dataclasses

import numpy as np
import pytest
import torch
from test_gradients import ZERO_VARIANCE, Reference, make_model, make_rollouts, n_params
from torch import nn

from gradalign.gradients import OnePassGradients, get_backend
from gradalign.gradients.onepass import iter_factors, unsupported_parameters
from gradalign.gradients.signals import NaiveGradients
from gradalign.gradients.surrogate import SurrogateBatch
from gradalign.policy.rollouts import Rollouts, pad

REL = 1e-5  # the target: exact one-pass scores equal the naive scores to 1e-5 relative in fp32

BACKENDS = {
    "materialise": OnePassGradients(),
    "gram": OnePassGradients(force_gram=True),
    "micro-batch-1": OnePassGradients(micro_batch=1),  # one problem per forward
    "tiny-budget": OnePassGradients(budget=64),  # every parameter takes the Gram path by size
}


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def setup(request):
    model = make_model(tie=request.param)
    rollouts, prompts, comps, rewards = make_rollouts(seed=3)
    refs = {scale: Reference(model, prompts, comps, rewards, scale) for scale in ("none", "group")}
    return model, rollouts, refs


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("scale", ["none", "group"])
def test_against_per_completion_autograd(setup, backend, scale):
    model, rollouts, refs = setup
    batch = SurrogateBatch(rollouts, rollouts.advantages(scale))
    dirs = torch.randn(3, n_params(model), generator=torch.Generator().manual_seed(11))
    sig = BACKENDS[backend].problem_signals(model, batch, dirs)
    for i, g in enumerate(refs[scale].problem_grads()):
        if ZERO_VARIANCE[i]:
            assert sig.norms[i] == 0 and torch.all(sig.dots[i] == 0)
            continue
        assert sig.norms[i].item() == pytest.approx(g.norm().item(), rel=REL)
        bound = REL * g.norm().item() * dirs.double().norm(dim=1)
        assert torch.all((sig.dots[i].double() - dirs.double() @ g).abs() <= bound)


def test_float64_model_agrees_to_a_few_fp32_ulps():
    model = make_model(tie=True, dtype=torch.float64, seed=4)
    rollouts, prompts, comps, rewards = make_rollouts(seed=5)
    ref = Reference(model, prompts, comps, rewards, "none")
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    dirs = torch.randn(2, n_params(model), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sig = OnePassGradients().problem_signals(model, batch, dirs)
    expected = torch.stack([g.norm() for g in ref.problem_grads()])
    # float64 model: the only fp32 steps are the library's logits cast and its fp32 outputs, so the error is a few
    # fp32 ulps (eps 1.19e-7), independent of the model's size. Norms: 8 ulps relative (measured <= 1.1 ulp over
    # seeds 4, 5, 9, 13 and 1-2 threads). Dots can be near 0, so they get the Cauchy-Schwarz scale 8·eps·‖g‖·‖d‖
    # (measured <= 0.03 ulp of it; a purely relative 1e-6 bound was met only by ~2%: 9.8e-7 at seed 13). A wrong
    # row, sign or term moves a dot by ~‖g‖‖d‖/sqrt(P) ~ 1e-3·‖g‖‖d‖, far above either bound.
    eps = torch.finfo(torch.float32).eps
    np.testing.assert_allclose(sig.norms.double().numpy(), expected.numpy(), rtol=8 * eps)
    for i, g in enumerate(ref.problem_grads()):
        bound = 8 * eps * g.norm() * dirs.norm(dim=1)
        assert torch.all((sig.dots[i].double() - dirs @ g).abs() <= bound), i


def random_rollouts(seed: int, vocab: int, n_problems: int) -> Rollouts:
    """Fresh random rollouts: random group sizes (2-6), prompt lengths, completion lengths and rewards."""
    g = np.random.default_rng(seed)
    prompts, comps, group, rewards = [], [], [], []
    for i in range(n_problems):
        prompt = g.integers(3, vocab, size=int(g.integers(1, 9))).tolist()
        for _ in range(int(g.integers(2, 7))):
            prompts.append(prompt)
            comps.append(g.integers(3, vocab, size=int(g.integers(1, 8))).tolist())
            group.append(i)
            rewards.append(float(g.random() < 0.5))
    p_ids, p_mask = pad(prompts, 0, "left")
    c_ids, c_mask = pad(comps, 0, "right")
    return Rollouts([f"p{i}" for i in range(n_problems)], torch.tensor(group), p_ids, p_mask, c_ids, c_mask,
                    torch.zeros(c_ids.shape), torch.tensor(rewards), [""] * len(group), 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_equals_naive_on_fresh_random_inputs(seed, tie):
    model = make_model(tie=tie, seed=100 + seed)
    rollouts = random_rollouts(seed, vocab=model.config.vocab_size, n_problems=12)
    batch = SurrogateBatch(rollouts, rollouts.advantages("group" if seed % 2 else "none"))
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(seed))
    naive = NaiveGradients().problem_signals(model, batch, dirs)
    fast = OnePassGradients(micro_batch=16).problem_signals(model, batch, dirs)
    live = naive.norms > 0
    assert live.sum() >= 4
    np.testing.assert_allclose(fast.norms[live].numpy(), naive.norms[live].numpy(), rtol=REL)
    scale = (naive.norms[:, None] * dirs.norm(dim=1)[None, :]).numpy()
    assert np.all(np.abs((fast.dots - naive.dots).numpy()) <= REL * scale)
    assert torch.all(fast.norms[~live] == 0)


def test_directions_through_the_backend_match_naive():
    model = make_model(tie=False, seed=9)
    rollouts = random_rollouts(7, vocab=model.config.vocab_size, n_problems=8)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    for name in ("pooled_gradient", "mean_unit_gradient"):
        a = getattr(NaiveGradients(), name)(model, batch)
        b = getattr(get_backend("onepass"), name)(model, batch)
        assert (a - b).norm() <= REL * a.norm()


def test_unsupported_modules_are_named_and_scored_by_the_exact_fallback(caplog):
    class Scaled(nn.Module):  # a parameter outside Linear / Embedding / *Norm
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    model = make_model(tie=True)
    model.model.rotary_extra = Scaled(nn.Identity())
    rollouts = random_rollouts(0, vocab=model.config.vocab_size, n_problems=2)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    assert unsupported_parameters(model) == ["model.rotary_extra.scale"]
    with caplog.at_level("WARNING"):
        OnePassGradients().problem_signals(model, batch, torch.zeros(0, 0))
    assert any("rotary_extra.scale" in r.message for r in caplog.records)
    with pytest.raises(NotImplementedError, match="rotary_extra.scale"):  # projected features cannot fall back
        next(iter_factors(model, batch))


def test_padding_token_used_as_a_real_token_gets_no_embedding_gradient():
    """Chat models often pad with a real token (SmolLM2: <|im_end|>). nn.Embedding(padding_idx) gives that row no
    gradient wherever it occurs, and one-pass must agree with autograd there too."""
    model = make_model(tie=False, seed=8)
    assert model.model.embed_tokens.padding_idx == 0
    rollouts, *_ = make_rollouts(seed=6)
    ids = rollouts.completion_ids.clone()
    ids[rollouts.completion_mask.bool() & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3)] = 0
    ids[:, 0] = 0  # at least one real pad-id token per completion
    rollouts.completion_ids = ids
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(3))
    naive = NaiveGradients().problem_signals(model, batch, dirs)
    for backend in (OnePassGradients(), OnePassGradients(force_gram=True)):
        sig = backend.problem_signals(model, batch, dirs)
        torch.testing.assert_close(sig.norms, naive.norms, rtol=REL, atol=1e-7)
        torch.testing.assert_close(sig.dots, naive.dots, rtol=REL, atol=REL * float(naive.norms.max()) * 20)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [True, False])
def test_exact_after_trl_training_leaves_the_model_in_train_mode_with_checkpointing(checkpointing):
    """TRL's GRPOTrainer leaves the policy in train mode, with gradient checkpointing on by default; the next
    round's one-pass signals must still equal the naive per-problem loop."""
    from gradalign.config import RunConfig
    from gradalign.curriculum.setup import make_reward
    from gradalign.curriculum.round import RoundSelector
    from gradalign.curriculum.trl_bridge import grpo_steps, new_optimizer
    from gradalign.data.regimes import unreliable_rewards
    from gradalign.policy.tiny import build_tiny_model, build_tokenizer

    cfg = RunConfig.of(problems_per_step=4, num_generations=4, rollouts_per_problem=4,
                    gradient_checkpointing=checkpointing)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=2)
    problems = unreliable_rewards(pool_size=16, validation_size=4, test_size=4, seed=2).pool
    optimizer, scheduler = new_optimizer(model, cfg)
    grpo_steps(model, tokenizer, problems[:8], 1, cfg, make_reward(cfg), optimizer, scheduler, seed=0)
    assert model.training and model.model.gradient_checkpointing == checkpointing
    selector = RoundSelector(cfg, [], make_reward(cfg))
    batch = selector.batch(selector.rollouts(model, tokenizer, problems, 4, seed=1, desc="candidates",
                                             sampling=dataclasses.replace(selector.sampling, temperature=1.5)))
    direction = torch.randn(1, n_params(model), generator=torch.Generator().manual_seed(3))
    fast = OnePassGradients().problem_signals(model, batch, direction)
    slow = NaiveGradients().problem_signals(model, batch, direction)
    assert (slow.norms > 0).sum() >= 4  # enough mixed-reward groups to compare
    # fp32 model, batch re-padded between the two paths: ~840 fp32 ulps (eps 1.19e-7) of headroom over the few-ulp
    # summation-order noise of 16 completions through the tiny model's layers (~5e-7 in the fast tests); the bugs
    # this guards (train-mode dropout, hooks firing twice under checkpointing) give errors of order 1.
    torch.testing.assert_close(fast.norms, slow.norms, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.dots, slow.dots, rtol=1e-4, atol=1e-5)


def test_bf16_weights_score_like_fp32_with_fp32_reductions():
    """A bf16 policy (what a GPU run loads) is scored through fp32 factors and reductions: its norms and
    cosines agree with the fp32 model's exact ones to bf16's own precision, and with the naive loop on the
    same bf16 weights."""
    rollouts = make_rollouts(seed=5)[0]
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    fp32, bf16 = make_model(tie=True), make_model(tie=True).to(torch.bfloat16)
    pooled = OnePassGradients().pooled_gradient(fp32, batch)  # a direction the problems align with (cos ~0.5)
    direction = (pooled / pooled.norm()).unsqueeze(0)
    exact = OnePassGradients().problem_signals(fp32, batch, direction)
    low = OnePassGradients().problem_signals(bf16, batch, direction)
    naive_low = NaiveGradients().problem_signals(bf16, batch, direction)
    assert low.norms.dtype == torch.float32
    live = exact.norms > 0
    assert exact.cosines()[live].abs().min() > 0.2
    # bf16 eps 7.8e-3: rounding every weight perturbs each gradient by ~1 bf16 ulp relative, compounded over the
    # tiny model's layers; norms rtol 3e-2 ≈ 4 ulps (measured up to ~1e-2 relative), cosines atol 2e-2 ≈ 2.5 ulps
    # (measured 1e-3), over seed offsets 0/77/1000 and 1-2 threads. Reducing in bf16 instead would give ≥ 1e-1.
    torch.testing.assert_close(low.norms[live], exact.norms[live], rtol=3e-2, atol=0)
    torch.testing.assert_close(low.cosines()[live], exact.cosines()[live], rtol=0, atol=2e-2)
    torch.testing.assert_close(low.norms, naive_low.norms, rtol=2e-2, atol=1e-6)


def test_scores_under_bf16_autocast_agree_with_fp32():
    """How a GPU run scores: fp32 weights, bf16 autocast (CPU autocast exercises the same path here). The factors
    arrive in bf16 and are reduced in fp32: norms and cosines agree with fp32 to bf16's precision."""
    rollouts = make_rollouts(seed=5)[0]
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    model = make_model(tie=True)
    pooled = OnePassGradients().pooled_gradient(model, batch)
    direction = (pooled / pooled.norm()).unsqueeze(0)
    exact = OnePassGradients().problem_signals(model, batch, direction)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = OnePassGradients().problem_signals(model, batch, direction)
        pooled_auto = OnePassGradients().pooled_gradient(model, batch)
    live = exact.norms > 0
    assert live.sum() >= 3 and auto.norms.dtype == torch.float32
    # bf16 factors, fp32 reductions: the same bf16-ulp bounds as above (measured 1.7e-2 and 1e-3)
    torch.testing.assert_close(auto.norms[live], exact.norms[live], rtol=3e-2, atol=0)
    torch.testing.assert_close(auto.cosines()[live], exact.cosines()[live], rtol=0, atol=2e-2)
    assert pooled_auto.dtype == torch.float32 and torch.nn.functional.cosine_similarity(pooled_auto, pooled, 0) > 0.999


@pytest.mark.parametrize("tie", [False, True])
def test_each_parameter_is_reduced_as_the_backward_reaches_it(tie):
    """The scorer hands a parameter on as soon as the backward has passed every module using it, so it never
    holds all layers' factors: the head comes first, the last layer's before the first layer's, and a head tied
    to the embedding waits for the embedding's gradient at the very end. Every parameter is handed on once."""
    from gradalign.gradients.onepass import backward_factors
    model = make_model(tie=tie)
    rollouts = make_rollouts(seed=2)[0]
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    names = {id(p): n for n, p in model.named_parameters()}
    order, live_calls = [], []
    backward_factors(model, batch, torch.arange(rollouts.group.numel()), torch.ones(batch.num_problems),
                     lambda p, factors: order.append(names[id(p)]) or live_calls.append(len(factors)))
    assert sorted(order) == sorted(names.values()) and all(live_calls)
    position = {n: i for i, n in enumerate(order)}
    assert position["model.layers.1.mlp.down_proj.weight"] < position["model.layers.0.mlp.down_proj.weight"]
    assert position["model.layers.0.self_attn.q_proj.weight"] < position["model.embed_tokens.weight"]
    if tie:  # one parameter, two modules: handed on when the second (the embedding) is done
        assert order[-1] == "model.embed_tokens.weight"
    else:
        assert order[0] == "lm_head.weight" and order[-1] == "model.embed_tokens.weight"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", ["zero-rows", "unequal-no-zeros", "equal-no-zeros"])
def test_per_problem_gradients_pack_only_the_tokens_that_carry_gradient(seed, case):
    """`materialised` drops tokens whose output gradient is 0 and packs the rest problem by problem; every way
    it can take (tokens to drop; unequal counts with none to drop; nothing to drop) must give Σ_t a_t b_tᵀ of each
    problem, an embedding's one-hot terms included."""
    from gradalign.gradients.onepass import Factor, _segments, materialised
    g = torch.Generator().manual_seed(seed)
    rows, cols, vocab = 5, 7, 6
    lengths = [4, 4, 4] if case == "equal-no-zeros" else [3, 6, 1, 4]
    T = sum(lengths)
    dense = Factor(torch.randn(T, rows, generator=g), torch.randn(T, cols, generator=g))
    index = Factor(torch.randint(0, rows, (T,), generator=g), torch.randn(T, cols, generator=g), index=True)
    if case == "zero-rows":  # padding / unread positions: a zero output gradient
        dense.a[torch.rand(T, generator=g) < 0.4] = 0
        index.b[torch.rand(T, generator=g) < 0.4] = 0
    seg = _segments(torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)), len(lengths))
    got = materialised([index, dense], (rows, cols), seg)
    for i, s in enumerate(seg):
        want = dense.a[s].double().T @ dense.b[s].double()
        want.index_add_(0, index.a[s], index.b[s].double())
        # fp32 sums of at most T products of unit-scale terms: a few T·eps of the largest term's scale
        tol = 4 * T * torch.finfo(torch.float32).eps * float(want.abs().max().clamp(min=1))
        assert torch.allclose(got[i].double(), want, atol=tol, rtol=0), (case, i)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_the_gram_form_chosen_for_few_tokens_equals_forming_each_gradient(tie, monkeypatch):
    """Where a problem's tokens are few next to a matrix's size, `_reduce` takes the Gram form (norms from two small
    batched matmuls, dots from one token-level matmul). Forced for every dense parameter here, it must give what
    forming each G_i gives, to the exact backends' tolerance."""
    from gradalign.gradients import onepass
    model = make_model(tie=tie, seed=21)
    rollouts = random_rollouts(4, vocab=model.config.vocab_size, n_problems=10)
    batch = SurrogateBatch(rollouts, rollouts.advantages("group"))
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(5))
    formed = OnePassGradients(micro_batch=16).problem_signals(model, batch, dirs)
    taken = []
    monkeypatch.setattr(onepass, "GRAM_TOKENS", 1e9)  # every dense parameter "has few tokens"
    monkeypatch.setattr(OnePassGradients, "_reduce_gram",
                        lambda self, *a, f=OnePassGradients._reduce_gram: taken.append(1) or f(self, *a))
    gram = OnePassGradients(micro_batch=16).problem_signals(model, batch, dirs)
    assert taken
    live = formed.norms > 0
    np.testing.assert_allclose(gram.norms[live].numpy(), formed.norms[live].numpy(), rtol=REL)
    scale = (formed.norms[:, None] * dirs.norm(dim=1)[None, :]).numpy()
    assert np.all(np.abs((gram.dots - formed.dots).numpy()) <= REL * scale)
