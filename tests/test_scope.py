"""Scoring a subset of the parameters (`score_parameters`, `gradalign.gradients.scope`).

Independent computations: the full per-problem gradients of `test_gradients.Reference` (per-completion autograd
in float64 over the whole model, unpadded) restricted to the scored parameters' coordinates; and, for a tied
head scored without its embedding, the gradient of an *untied copy*'s head, which is exactly the head's use of
the tied matrix. Tolerances are the exact backends' (REL, `test_onepass`): the subset changes which terms are
summed, not their precision.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from test_gradients import ZERO_VARIANCE, Reference, make_model, make_rollouts
from torch import nn

from gradalign.config import ConfigError, RunConfig
from gradalign.gradients import OnePassGradients
from gradalign.gradients.onepass import ActivationCapture
from gradalign.gradients.scope import decoder_blocks, resolve, scoring_scope
from gradalign.gradients.signals import NaiveGradients, trainable
from gradalign.gradients.surrogate import SurrogateBatch

REL = 1e-5


def flat_mask(model, names: set[str]) -> torch.Tensor:
    """Coordinates of the named parameters in the flat layout of `model.parameters()` (Reference's)."""
    parts = [torch.full((p.numel(),), n in names) for n, p in model.named_parameters()]
    return torch.cat(parts)


def check_signals(sig, grads: list[torch.Tensor], dirs: torch.Tensor) -> None:
    for i, g in enumerate(grads):
        if ZERO_VARIANCE[i]:
            assert sig.norms[i] == 0
            continue
        assert sig.norms[i].item() == pytest.approx(g.norm().item(), rel=REL)
        bound = REL * g.norm().item() * dirs.double().norm(dim=1)
        assert torch.all((sig.dots[i].double() - dirs.double() @ g).abs() <= bound)


@pytest.mark.parametrize("backend", [OnePassGradients(), OnePassGradients(force_gram=True), NaiveGradients()],
                         ids=["onepass", "gram", "naive"])
@pytest.mark.parametrize("seed", [0, 1])
def test_last_block_and_head_equal_the_full_gradient_restricted_to_them(backend, seed):
    model = make_model(tie=False, seed=seed)
    rollouts, prompts, comps, rewards = make_rollouts(seed=seed + 3)
    ref = Reference(model, prompts, comps, rewards, "none")
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    names = {n for n, _ in model.named_parameters() if n.startswith(("model.layers.1.", "lm_head."))}
    mask = flat_mask(model, names)
    with scoring_scope(model, ["last_blocks:1", "lm_head.*"]):
        assert {id(p) for p in trainable(model)} == {id(p) for n, p in model.named_parameters() if n in names}
        dirs = torch.randn(2, int(mask.sum()), generator=torch.Generator().manual_seed(seed))
        sig = backend.problem_signals(model, batch, dirs)
    check_signals(sig, [g[mask] for g in ref.problem_grads()], dirs)
    assert all(p.requires_grad for p in model.parameters())  # restored


@pytest.mark.parametrize("backend", [OnePassGradients(), NaiveGradients()], ids=["onepass", "naive"])
def test_a_tied_head_without_its_embedding_is_the_untied_heads_gradient(backend):
    model = make_model(tie=True, seed=5)
    untied = copy.deepcopy(model)
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = nn.Parameter(untied.model.embed_tokens.weight.detach().clone())
    rollouts, prompts, comps, rewards = make_rollouts(seed=6)
    ref = Reference(untied, prompts, comps, rewards, "none")
    head = flat_mask(untied, {"lm_head.weight"})
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    with scoring_scope(model, ["lm_head.*"]):
        dirs = torch.randn(3, int(head.sum()), generator=torch.Generator().manual_seed(2))
        sig = backend.problem_signals(model, batch, dirs)
        pooled = backend.pooled_gradient(model, batch)
    check_signals(sig, [g[head] for g in ref.problem_grads()], dirs)
    assert torch.allclose(pooled.double(), ref.pooled()[head], rtol=0, atol=REL * ref.pooled()[head].norm().item())


def test_the_backward_stops_at_the_first_scored_block():
    """Frozen blocks are not captured, and the first scored module's input needs no gradient: the backward ends
    there instead of running through the whole model."""
    model = make_model(tie=True, seed=1)
    with scoring_scope(model, ["last_blocks:1", "lm_head.*"]):
        capture = ActivationCapture(model)
        try:
            scored = {name for name, m in model.named_modules() if m in capture.params}
        finally:
            capture.close()
    assert scored and all(n.startswith("model.layers.1.") or n == "lm_head" for n in scored), scored


def test_scope_is_restored_after_an_error_and_refuses_bad_patterns():
    model = make_model(tie=True, seed=1)
    with pytest.raises(RuntimeError, match="inside"):
        with scoring_scope(model, ["lm_head.*"]):
            assert not model.model.layers[0].mlp.up_proj.weight.requires_grad
            raise RuntimeError("inside")
    assert all(p.requires_grad for p in model.parameters())
    embed = model.model.embed_tokens
    assert not embed._forward_hooks  # the embedding's detach hook is gone too
    with pytest.raises(ValueError, match=r"matched no trainable parameter \(names look like: .*lm_head.weight"):
        with scoring_scope(model, ["decoder.*"]):
            pass
    with pytest.raises(ValueError, match="tied to a scored parameter"):  # the embedding's use without the head's
        with scoring_scope(model, ["model.embed_tokens.*"]):
            pass
    with pytest.raises(ValueError, match="tied to a scored parameter"):  # found by resolve, before any round
        resolve(model, ["model.embed_tokens.*"])
    with pytest.raises(ValueError, match="last_blocks:K with K >= 1"):
        resolve(model, ["last_blocks:0"])
    assert decoder_blocks(model) == ["model.layers.0", "model.layers.1"]


def test_config_takes_patterns_and_refuses_bad_ones_in_one_line():
    assert RunConfig(score_parameters=["last_blocks:2", "lm_head.*"]).score_parameters == ["last_blocks:2", "lm_head.*"]
    assert RunConfig().score_parameters == []
    with pytest.raises(ConfigError, match=r"'score_parameters' must be a list of names"):
        RunConfig(score_parameters="lm_head.*")
    with pytest.raises(ConfigError, match=r"'score_parameters' 'last_blocks:x' must be last_blocks:K"):
        RunConfig(score_parameters=["last_blocks:x"])


def test_a_round_scores_in_the_configured_scope(tmp_path):
    """`RoundSelector` scores inside the configured scope: the same round (same rollouts) scored in the scope gives
    other, finite cosines than full-model scoring, and the policy is left whole. (How well they agree is what
    `gradalign bench subset` measures; on this tiny round they need not even correlate.)"""
    from gradalign.curriculum.round import RoundSelector
    from gradalign.curriculum.setup import load_problem_sets, make_reward
    from gradalign.policy.load import load_policy
    cfg = RunConfig(method="gradalign", pool_size=40, validation_size=8, test_size=8, chunk_size=12,
                    selection_ratio=4, rollouts_per_problem=4, validation_rollouts=4, output_dir=str(tmp_path),
                    score_parameters=["last_blocks:1", "lm_head.*"])  # the published cosine: norms and dots
    model, tokenizer = load_policy("tiny")
    sets = load_problem_sets(cfg)
    chunk = sets.pool[:12]
    scoped = RoundSelector(cfg, sets.validation, make_reward(cfg)).select(model, tokenizer, chunk, seed=3)
    full_cfg = dataclasses.replace(cfg, score_parameters=[])
    full = RoundSelector(full_cfg, sets.validation, make_reward(full_cfg)).select(model, tokenizer, chunk, seed=3)
    live = ~scoped.candidates.zero_variance
    assert live.sum() >= 3 and all(p.requires_grad for p in model.parameters())
    assert not np.allclose(scoped.candidates.cos_val[live], full.candidates.cos_val[live])
    assert np.isfinite(scoped.candidates.cos_val).all()
    assert np.array_equal(scoped.candidates.pass_rate, full.candidates.pass_rate)  # the same rollouts


def test_a_pattern_that_names_nothing_is_refused_before_the_first_round(tmp_path, capsys):
    """Checked against the loaded model (after any LoRA wrapping) before anything is rolled out or written."""
    from gradalign.cli import main
    out = tmp_path / "run"
    code = main(["run", "--output-dir", str(out), "--pool-size", "40", "--validation-size", "8", "--test-size", "8",
                 "--chunk-size", "16", "--rounds", "1", "--score-parameters", "decoder.*"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "'score_parameters'" in err[0] and "matched no trainable parameter" in err[0], err
    assert not (out / "rounds.jsonl").exists()
