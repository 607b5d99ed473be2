"""Per-problem policy gradients (`NaiveGradients`) and rollout statistics against independent computations.

The reference here never touches the code under test: every completion is fed to the model on its own, WITHOUT
padding (positions 0..L-1), its completion-token log-probs come from `torch.log_softmax`, and per-problem /
pooled gradients are assembled from per-completion `torch.autograd.grad` results in float64:

    g_i   = -(1/N_i) Σ_{j∈i} A_j ∇ Σ_t log π(y_jt)          (token mean over problem i's completion tokens)
    g_all = -(1/N)   Σ_j     A_j ∇ Σ_t log π(y_jt)          (token mean pooled over every completion)

The library pads (prompts on the left, completions on the right) and uses position ids counted from the first
real token, so it must give the same numbers up to floating-point noise. (Measured: ~5e-7 relative; dropping the
attention mask gives errors of order 1, so the tolerance below separates noise from bugs by a wide margin.)

Tolerances: the models are fp32 and the library casts logits to fp32 before `log_softmax`, so agreement is limited
by fp32 round-off in differently shaped (padded vs unpadded) matmuls. Vectors are compared by the norm of the
difference relative to the norm of the reference, REL = 1e-5; scalars (norms) with rel 1e-5; dots / cosines with
an absolute error bounded by REL·‖g‖·‖d‖ (a dot can be close to 0, so a purely relative bound would be wrong).
The float64 variant of the model is also checked: there the only fp32 step is the library's logits cast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from gradalign.gradients.signals import EPS, NaiveGradients, ProblemSignals
from gradalign.gradients.surrogate import SurrogateBatch
from gradalign.policy.rollouts import Rollouts, pad

REL = 1e-5  # relative tolerance, see the module docstring
VOCAB = 20
PAD = 0


# ───────────────────────────────────────────────────────────────────────────────── fixtures: model + rollouts


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add OpenMP spin-wait, which on a shared 2-core machine makes a
    forward pass ~50x slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def make_model(tie: bool, dtype: torch.dtype = torch.float32, seed: int = 0) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie, pad_token_id=PAD,
        bos_token_id=1, eos_token_id=2, initializer_range=0.2, use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype).eval()


GROUP_SIZES = [2, 3, 5, 4, 3]
# Rewards per problem: problem 3 is zero-variance (all correct), problem 4 zero-variance (all wrong); the
# others are random binary but forced to disagree.
ZERO_VARIANCE = [False, False, False, True, True]


def make_rollouts(seed: int = 1):
    """Hand-made rollouts: (Rollouts, raw per-completion (prompt, completion) lists, rewards per problem)."""
    g = np.random.default_rng(seed)
    prompts, comps, rewards, group = [], [], [], []
    per_problem_rewards = []
    for i, k in enumerate(GROUP_SIZES):
        prompt = g.integers(1, VOCAB, size=int(g.integers(1, 7))).tolist()  # one prompt per problem
        if i == 3:
            r = [1.0] * k
        elif i == 4:
            r = [0.0] * k
        else:
            r = g.integers(0, 2, size=k).astype(float).tolist()
            while len(set(r)) == 1:
                r = g.integers(0, 2, size=k).astype(float).tolist()
        per_problem_rewards.append(r)
        for j in range(k):
            prompts.append(list(prompt))
            comps.append(g.integers(1, VOCAB, size=int(g.integers(1, 6))).tolist())
            rewards.append(r[j])
            group.append(i)
    # Padding built by hand (not with `pad`): prompts left-padded, completions right-padded, pad id 0.
    P, C = max(map(len, prompts)) + 1, max(map(len, comps)) + 2  # extra padding columns on purpose
    n_rows = len(prompts)
    p_ids = torch.full((n_rows, P), PAD, dtype=torch.long)
    p_mask = torch.zeros((n_rows, P), dtype=torch.long)
    c_ids = torch.full((n_rows, C), PAD, dtype=torch.long)
    c_mask = torch.zeros((n_rows, C), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, comps)):
        p_ids[row, P - len(p):] = torch.tensor(p)
        p_mask[row, P - len(p):] = 1
        c_ids[row, :len(c)] = torch.tensor(c)
        c_mask[row, :len(c)] = 1
    rollouts = Rollouts(
        problem_ids=[f"p{i}" for i in range(len(GROUP_SIZES))],
        group=torch.tensor(group, dtype=torch.long),
        prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids, completion_mask=c_mask,
        sample_logps=torch.zeros(n_rows, C), rewards=torch.tensor(rewards, dtype=torch.float32),
        completions=[f"completion {row}" for row in range(n_rows)], temperature=0.7,
    )
    return rollouts, prompts, comps, per_problem_rewards


# ───────────────────────────────────────────────────────────────────────────────── the independent reference


def reference_advantages(per_problem_rewards, scale: str, eps: float = 1e-4) -> np.ndarray:
    out = []
    for r in per_problem_rewards:
        r = np.asarray(r, dtype=np.float64)
        a = r - r.mean()
        if scale == "group":
            a = a / (r.std(ddof=1) + eps)
        out.extend(a.tolist())
    return np.asarray(out)


def per_completion_grads(model, prompts, comps) -> torch.Tensor:
    """Row j: ∇_θ Σ_t log π(y_jt | prompt_j, y_j<t), unpadded, default positions 0..L-1, float64 [N, P]."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for p, c in zip(prompts, comps):
        ids = torch.tensor([p + c])
        logits = model(input_ids=ids).logits[0]  # [L, V]
        logp = torch.log_softmax(logits.double(), dim=-1)
        s = sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(c))
        grads = torch.autograd.grad(s, params, allow_unused=True)
        rows.append(torch.cat([(gr if gr is not None else torch.zeros_like(pr)).reshape(-1).double()
                               for gr, pr in zip(grads, params)]))
    return torch.stack(rows)


class Reference:
    def __init__(self, model, prompts, comps, per_problem_rewards, scale):
        self.G = per_completion_grads(model, prompts, comps)
        self.adv = torch.from_numpy(reference_advantages(per_problem_rewards, scale))
        self.ntok = torch.tensor([len(c) for c in comps], dtype=torch.float64)
        sizes = [len(r) for r in per_problem_rewards]
        self.rows = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])

    def problem_grad(self, i: int) -> torch.Tensor:
        rows = torch.from_numpy(self.rows[i])
        return -(self.adv[rows] @ self.G[rows]) / self.ntok[rows].sum()

    def pooled(self) -> torch.Tensor:
        return -(self.adv @ self.G) / self.ntok.sum()

    def problem_grads(self) -> list[torch.Tensor]:
        return [self.problem_grad(i) for i in range(len(self.rows))]


def assert_vec_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL):
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape
    err = (actual - expected).norm().item()
    assert err <= rel * expected.norm().item(), f"‖Δ‖ = {err:.3e}, ‖ref‖ = {expected.norm().item():.3e}"


# ───────────────────────────────────────────────────────────────────────────────── rollout statistics


def test_advantages_against_numpy():
    rollouts, _, _, rewards = make_rollouts()
    for scale in ("none", "group"):
        got = rollouts.advantages(scale).numpy()
        assert got.dtype == np.float32
        # fp32 (eps 1.19e-7) mean / std / divide over groups of <= 8 rewards: a few ulps; rtol 1e-6 ≈ 8 ulps, atol
        # 1e-7 for entries near 0 (measured <= 3.4% of the tolerance here and in the tests below; a wrong ddof or
        # eps placement gives >= 1e-2)
        np.testing.assert_allclose(got, reference_advantages(rewards, scale), rtol=1e-6, atol=1e-7)
    # the eps is configurable and used as (std + eps)
    r = np.asarray(rewards[0])
    got = rollouts.advantages("group", eps=0.5).numpy()[: len(r)]
    np.testing.assert_allclose(got, (r - r.mean()) / (r.std(ddof=1) + 0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="none, group"):
        rollouts.advantages("std")


def test_advantages_zero_variance_are_exactly_zero():
    rollouts, _, _, _ = make_rollouts()
    for scale in ("none", "group"):
        adv = rollouts.advantages(scale)
        for i, zv in enumerate(ZERO_VARIANCE):
            if zv:
                assert torch.all(adv[rollouts.group == i] == 0)


def test_advantages_fractional_rewards_and_singleton_group():
    r = Rollouts(problem_ids=["a", "b"], group=torch.tensor([0, 0, 0, 1]), prompt_ids=torch.ones(4, 1, dtype=torch.long),
                 prompt_mask=torch.ones(4, 1, dtype=torch.long), completion_ids=torch.ones(4, 1, dtype=torch.long),
                 completion_mask=torch.ones(4, 1, dtype=torch.long), sample_logps=torch.zeros(4, 1),
                 rewards=torch.tensor([0.25, 1.0, 0.0, 0.7]), completions=["", "", "", ""], temperature=1.0)
    x = np.array([0.25, 1.0, 0.0])
    np.testing.assert_allclose(r.advantages("none").numpy(), np.r_[x - x.mean(), 0.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.advantages("group").numpy(), np.r_[(x - x.mean()) / (x.std(ddof=1) + 1e-4), 0.0],
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.pass_rates(), [x.mean(), 0.7], rtol=1e-6)
    assert r.zero_variance().tolist() == [False, True]  # a single completion has nothing to disagree with


def test_unscored_completions_are_left_out_as_trl_leaves_them_out():
    """A NaN reward (every TRL reward function said None) is out of its group's mean and std, and its advantage is 0;
    a group with fewer than two scored completions is zero-variance; with none scored its pass rate is NaN."""
    nan = float("nan")
    rewards = torch.tensor([1.0, nan, 0.0, 0.0, nan, 1.0, nan, nan, 0.5])
    r = Rollouts(problem_ids=["a", "b", "c"], group=torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2]),
                 prompt_ids=torch.ones(9, 1, dtype=torch.long), prompt_mask=torch.ones(9, 1, dtype=torch.long),
                 completion_ids=torch.ones(9, 1, dtype=torch.long), completion_mask=torch.ones(9, 1, dtype=torch.long),
                 sample_logps=torch.zeros(9, 1), rewards=rewards, completions=[""] * 9, temperature=1.0)
    x = np.array([1.0, 0.0, 0.0])  # problem a's scored rewards
    expected = np.r_[(x - x.mean()) / (x.std(ddof=1) + 1e-4), 0.0]
    got = r.advantages("group").numpy()
    np.testing.assert_allclose(got[[0, 2, 3, 1]], expected, rtol=1e-6, atol=1e-7)
    assert np.all(got[4:] == 0)
    np.testing.assert_allclose(r.pass_rates(), [1 / 3, 1.0, 0.5], rtol=1e-6)
    assert r.zero_variance().tolist() == [False, True, True]
    unscored = r.select_problems([1])
    unscored.rewards[:] = nan
    assert np.isnan(unscored.pass_rates()).all() and unscored.zero_variance().all()


def test_pass_rates_and_zero_variance_against_python():
    rollouts, _, _, rewards = make_rollouts()
    expected_p = [sum(r) / len(r) for r in rewards]
    np.testing.assert_allclose(rollouts.pass_rates(), expected_p, rtol=1e-6)
    assert rollouts.zero_variance().tolist() == [len(set(r)) == 1 for r in rewards] == ZERO_VARIANCE


def test_pad_matches_hand_layout():
    seqs = [[3, 4, 5], [7], [], [1, 2]]
    ids, mask = pad(seqs, 0, "left")
    assert ids.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0], [0, 1, 2]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1]]
    ids, mask = pad(seqs, 9, "right")
    assert ids.tolist() == [[3, 4, 5], [7, 9, 9], [9, 9, 9], [1, 2, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]]
    ids, mask = pad([[], []], 0, "right")
    assert ids.shape == (2, 1) and mask.sum() == 0


def test_select_problems_keeps_rows_in_order():
    rollouts, _, _, rewards = make_rollouts()
    sub = rollouts.select_problems([2, 0])
    assert sub.problem_ids == ["p2", "p0"]
    assert torch.bincount(sub.group).tolist() == [GROUP_SIZES[2], GROUP_SIZES[0]]
    assert len(sub.completions) == sub.rewards.numel() == GROUP_SIZES[0] + GROUP_SIZES[2]
    np.testing.assert_allclose(sub.pass_rates(), [np.mean(rewards[2]), np.mean(rewards[0])], rtol=1e-6)


# ───────────────────────────────────────────────────────────────────────────────── gradients


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def setup(request):
    model = make_model(tie=request.param)
    rollouts, prompts, comps, rewards = make_rollouts()
    refs = {scale: Reference(model, prompts, comps, rewards, scale) for scale in ("none", "group")}
    return model, rollouts, refs


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("scale", ["none", "group"])
def test_problem_signals_norms_and_dots(setup, scale):
    model, rollouts, refs = setup
    ref = refs[scale]
    batch = SurrogateBatch(rollouts, rollouts.advantages(scale))
    dirs = torch.randn(3, n_params(model), generator=torch.Generator().manual_seed(7))
    sig = NaiveGradients().problem_signals(model, batch, dirs)
    assert isinstance(sig, ProblemSignals)
    assert sig.norms.shape == (len(GROUP_SIZES),) and sig.dots.shape == (len(GROUP_SIZES), 3)
    for i, g in enumerate(ref.problem_grads()):
        if ZERO_VARIANCE[i]:
            assert sig.norms[i].item() == 0.0 and torch.all(sig.dots[i] == 0)
            assert g.norm().item() == 0.0  # the reference agrees: A = 0 there
            continue
        assert g.norm().item() > 1e-3  # a real, non-degenerate gradient
        assert sig.norms[i].item() == pytest.approx(g.norm().item(), rel=REL)
        expected_dots = dirs.double() @ g
        bound = REL * g.norm().item() * dirs.double().norm(dim=1)
        assert torch.all((sig.dots[i].double() - expected_dots).abs() <= bound), (sig.dots[i], expected_dots)


def test_problem_signals_without_directions(setup):
    model, rollouts, refs = setup
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    sig = NaiveGradients().problem_signals(model, batch, torch.zeros(0, n_params(model)))
    assert sig.dots.shape == (len(GROUP_SIZES), 0)
    expected = [g.norm().item() for g in refs["none"].problem_grads()]
    np.testing.assert_allclose(sig.norms.numpy(), expected, rtol=REL)


@pytest.mark.parametrize("micro_batch", [256, 1, 4])
@pytest.mark.parametrize("scale", ["none", "group"])
def test_pooled_gradient(setup, scale, micro_batch):
    model, rollouts, refs = setup
    batch = SurrogateBatch(rollouts, rollouts.advantages(scale))
    g = NaiveGradients(micro_batch=micro_batch).pooled_gradient(model, batch)
    assert g.dtype == torch.float32 and g.shape == (n_params(model),)
    assert_vec_close(g, refs[scale].pooled())


@pytest.mark.parametrize("scale", ["none", "group"])
def test_mean_unit_gradient(setup, scale):
    model, rollouts, refs = setup
    batch = SurrogateBatch(rollouts, rollouts.advantages(scale))
    g = NaiveGradients(micro_batch=5).mean_unit_gradient(model, batch)
    live = [gi for gi, zv in zip(refs[scale].problem_grads(), ZERO_VARIANCE) if not zv]
    expected = torch.stack([gi / gi.norm() for gi in live]).mean(0)
    assert_vec_close(g, expected)


@pytest.mark.parametrize("scale", ["none", "group"])
def test_cosines_to_pooled_direction(setup, scale):
    """End to end: s(x) = ⟨g(x), ĝ_V⟩ / (‖g(x)‖ + 1e-5) with ĝ_V = g_V / (‖g_V‖ + 1e-5), g_V the pooled gradient."""
    model, rollouts, refs = setup
    ref = refs[scale]
    backend = NaiveGradients()
    batch = SurrogateBatch(rollouts, rollouts.advantages(scale))
    g_v = backend.pooled_gradient(model, batch)
    g_v_hat = g_v / (g_v.norm() + 1e-5)
    other = torch.randn(n_params(model), generator=torch.Generator().manual_seed(3))
    other_hat = other / other.norm()
    sig = backend.problem_signals(model, batch, torch.stack([g_v_hat, other_hat]))

    ref_v = ref.pooled()
    ref_v_hat = ref_v / (ref_v.norm() + 1e-5)
    assert EPS == 1e-5
    for k, d in enumerate((ref_v_hat, other_hat.double())):
        cos = sig.cosines(k)
        for i, g in enumerate(ref.problem_grads()):
            if ZERO_VARIANCE[i]:
                assert cos[i].item() == 0.0
                continue
            expected = (g @ d).item() / (g.norm().item() + 1e-5)
            assert cos[i].item() == pytest.approx(expected, abs=2 * REL), (k, i)
            assert -1.0 - 1e-6 <= cos[i].item() <= 1.0 + 1e-6
    # default k = 0
    assert torch.equal(sig.cosines(), sig.cosines(0))
    # sanity of the reference itself: pooled = Σ_i (N_i / N) g_i
    ntok = torch.tensor([ref.ntok[torch.from_numpy(r)].sum().item() for r in ref.rows], dtype=torch.float64)
    recombined = sum(w * gi for w, gi in zip(ntok / ntok.sum(), ref.problem_grads()))
    assert_vec_close(recombined, ref_v, rel=1e-10)


def test_combined_gradient_weights(setup):
    """Σ_i w_i g_i for arbitrary weights (one problem alone: w = e_i gives exactly g_i)."""
    model, rollouts, refs = setup
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    grads = refs["none"].problem_grads()
    w = torch.tensor([0.5, -2.0, 1.5, 3.0, 0.0])
    got = NaiveGradients(micro_batch=3).combined_gradient(model, batch, w)
    assert_vec_close(got, sum(wi.item() * gi for wi, gi in zip(w, grads)))
    e1 = torch.zeros(len(GROUP_SIZES))
    e1[1] = 1.0
    assert_vec_close(NaiveGradients().combined_gradient(model, batch, e1), grads[1])


def test_float64_model_agrees():
    """Same comparison with a float64 model (the library still casts logits to fp32; tolerance unchanged)."""
    model = make_model(tie=False, dtype=torch.float64, seed=5)
    rollouts, prompts, comps, rewards = make_rollouts(seed=11)
    ref = Reference(model, prompts, comps, rewards, "group")
    batch = SurrogateBatch(rollouts, rollouts.advantages("group"))
    backend = NaiveGradients()
    sig = backend.problem_signals(model, batch, torch.zeros(0, n_params(model)))
    np.testing.assert_allclose(sig.norms.numpy(), [g.norm().item() for g in ref.problem_grads()], rtol=REL)
    assert_vec_close(backend.pooled_gradient(model, batch), ref.pooled())


def test_existing_grads_untouched(setup):
    model, rollouts, _ = setup
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    before = []
    for k, p in enumerate(params):
        p.grad = None if k % 3 == 0 else torch.randn(p.shape, generator=gen, dtype=p.dtype)
        before.append(None if p.grad is None else (p.grad, p.grad.clone()))
    try:
        batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
        backend = NaiveGradients(micro_batch=4)
        backend.problem_signals(model, batch, torch.randn(2, n_params(model)))
        backend.pooled_gradient(model, batch)
        backend.mean_unit_gradient(model, batch)
        for p, b in zip(params, before):
            if b is None:
                assert p.grad is None
            else:
                assert p.grad is b[0] and torch.equal(p.grad, b[1])
    finally:
        for p in params:
            p.grad = None


def test_padding_does_not_change_signals(setup):
    """More padding columns (left on prompts, right on completions) give the same gradient signals."""
    model, rollouts, _ = setup
    extra_p, extra_c = 3, 2
    n = rollouts.group.numel()
    wider = Rollouts(
        problem_ids=rollouts.problem_ids, group=rollouts.group,
        prompt_ids=torch.cat([torch.zeros(n, extra_p, dtype=torch.long), rollouts.prompt_ids], 1),
        prompt_mask=torch.cat([torch.zeros(n, extra_p, dtype=torch.long), rollouts.prompt_mask], 1),
        completion_ids=torch.cat([rollouts.completion_ids, torch.zeros(n, extra_c, dtype=torch.long)], 1),
        completion_mask=torch.cat([rollouts.completion_mask, torch.zeros(n, extra_c, dtype=torch.long)], 1),
        sample_logps=torch.zeros(n, rollouts.completion_ids.shape[1] + extra_c), rewards=rollouts.rewards,
        completions=rollouts.completions, temperature=rollouts.temperature,
    )
    backend = NaiveGradients()
    a = backend.pooled_gradient(model, SurrogateBatch(rollouts, rollouts.advantages("none")))
    b = backend.pooled_gradient(model, SurrogateBatch(wider, wider.advantages("none")))
    assert_vec_close(b, a)


def test_frozen_parameters_are_left_out():
    """Only parameters with requires_grad enter the flat gradient (e.g. a frozen embedding / first layer)."""
    model = make_model(tie=False, seed=2)
    model.model.embed_tokens.weight.requires_grad_(False)
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    rollouts, prompts, comps, rewards = make_rollouts(seed=4)
    ref = Reference(model, prompts, comps, rewards, "none")  # its own requires_grad filter
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable < sum(p.numel() for p in model.parameters())
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    g = NaiveGradients().pooled_gradient(model, batch)
    assert g.shape == (n_trainable,)
    assert_vec_close(g, ref.pooled())
    assert all(p.grad is None for p in model.parameters())
