"""FuncGradients (torch.func per-problem gradients) reproduces NaiveGradients' norms and dots."""

import pytest
import torch

from gradalign.gradients.persample import FuncGradients
from gradalign.gradients.signals import NaiveGradients, trainable, unit
from gradalign.gradients.surrogate import SurrogateBatch
from gradalign.policy.rollouts import Rollouts, pad
from gradalign.policy.tiny import build_tiny_model, build_tokenizer


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest |b| (scale-relative, so near-zero entries do not blow it up)."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def fabricate(tok, group_sizes, rewards, seed=0) -> Rollouts:
    """Rollouts with left-padded prompts of varied length and right-padded completions of varied length."""
    gen = torch.Generator().manual_seed(seed)
    alphabet = list(range(4, len(tok)))
    prompts, comps, groups = [], [], []
    for i, k in enumerate(group_sizes):
        plen = int(torch.randint(3, 8, (1,), generator=gen))
        prompt = [tok.bos_token_id] + [alphabet[j] for j in torch.randint(len(alphabet), (plen,), generator=gen)]
        for _ in range(k):
            clen = int(torch.randint(1, 6, (1,), generator=gen))
            comps.append([alphabet[j] for j in torch.randint(len(alphabet), (clen,), generator=gen)] + [tok.eos_token_id])
            prompts.append(prompt)
            groups.append(i)
    p_ids, p_mask = pad(prompts, tok.pad_token_id, "left")
    c_ids, c_mask = pad(comps, tok.pad_token_id, "right")
    return Rollouts(problem_ids=[f"p{i}" for i in range(len(group_sizes))], group=torch.tensor(groups),
                    prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids, completion_mask=c_mask,
                    sample_logps=torch.zeros(c_ids.shape), rewards=torch.tensor(rewards, dtype=torch.float32),
                    completions=[""] * len(groups), temperature=1.0)


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    sizes = [3, 1, 4, 2, 5, 3]  # varied group sizes; problem 1 has a single completion (zero variance)
    rewards = [1, 0, 0] + [1] + [1, 1, 1, 1] + [0, 1] + [1, 0, 1, 1, 0] + [0, 1, 1]  # problem 2: all 1s
    return tok, fabricate(tok, sizes, rewards)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("scale", ["none", "group"])
@pytest.mark.parametrize("tied", [True, False])
def test_func_matches_naive(setup, scale, tied):
    tok, rollouts = setup
    model = build_tiny_model(tok, seed=1, hidden=32, layers=2, heads=2, intermediate=64, tie_word_embeddings=tied)
    batch = SurrogateBatch(rollouts, rollouts.advantages(scale))
    pooled = NaiveGradients().pooled_gradient(model, batch)
    dirs = torch.stack([unit(pooled), unit(torch.randn(pooled.numel(), generator=torch.Generator().manual_seed(3)))])
    ref = NaiveGradients().problem_signals(model, batch, dirs)
    # A small memory budget forces several chunks (one problem per chunk), the default packs them in one.
    for backend in (FuncGradients(), FuncGradients(grad_memory_mb=1e-3), FuncGradients(attention="model")):
        got = backend.problem_signals(model, batch, dirs)
        assert got.norms[1] == 0 and got.norms[2] == 0  # zero-variance groups: exactly zero
        assert (ref.norms[[0, 3, 4, 5]] > 0).all()
        assert rel_err(got.norms, ref.norms) < 1e-5
        for d in range(dirs.shape[0]):
            assert rel_err(got.dots[:, d], ref.dots[:, d]) < 1e-5
        # cosines lie in [-1, 1]: atol 1e-5 ≈ 84 fp32 ulps (eps 1.19e-7) of the fp32 dot / norm (measured 9e-8)
        assert torch.allclose(got.cosines(0), ref.cosines(0), atol=1e-5)


def test_no_directions_frozen_params_and_grads_untouched(setup):
    tok, rollouts = setup
    model = build_tiny_model(tok, seed=2, hidden=32, layers=2, heads=2, intermediate=64)
    model.model.layers[0].requires_grad_(False)  # only the trainable parameters count
    batch = SurrogateBatch(rollouts, rollouts.advantages())
    for p in trainable(model):
        p.grad = torch.full_like(p, 7.0)
    ref = NaiveGradients().problem_signals(model, batch, torch.zeros(0, 0))
    got = FuncGradients().problem_signals(model, batch, torch.zeros(0, 0))
    assert got.dots.shape == (6, 0)
    assert rel_err(got.norms, ref.norms) < 1e-5
    assert all((p.grad == 7.0).all() for p in trainable(model))
    assert model.config._attn_implementation == "sdpa"  # restored after the eager call
    # mean_unit_gradient goes through problem_signals and must agree too
    a = NaiveGradients().mean_unit_gradient(model, batch)
    b = FuncGradients().mean_unit_gradient(model, batch)
    assert rel_err(b, a) < 1e-5


def test_wrong_direction_width_is_an_error(setup):
    tok, rollouts = setup
    model = build_tiny_model(tok, seed=1, hidden=32, layers=2, heads=2, intermediate=64)
    with pytest.raises(ValueError, match="directions"):
        FuncGradients().problem_signals(model, SurrogateBatch(rollouts, rollouts.advantages()), torch.zeros(1, 5))
