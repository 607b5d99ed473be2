"""The off-policy ratio (CROPI's POPI), the KL term (LearnAlign) and sequence-mean aggregation, against an
independent reference: each completion fed alone and unpadded, its explicit per-token loss written out
(A·π_θ/β − β_KL·(e^{ref−lp} − (ref−lp) − 1)), differentiated with autograd in float64. Every backend (naive,
one-pass both reduction paths, projected features) must give the same per-problem gradients."""

import numpy as np
import pytest
import torch
from test_gradients import GROUP_SIZES, make_model, make_rollouts, n_params, reference_advantages

from gradalign.gradients import OnePassGradients
from gradalign.gradients.projections import FactoredProjector
from gradalign.gradients.signals import NaiveGradients
from gradalign.gradients.surrogate import SurrogateBatch, completion_logps

REL = 1e-5


def token_logps(model, prompt, comp, temperature):
    """log π_θ(y_t) of one completion, unpadded, float64 softmax of logits / temperature."""
    logits = model(input_ids=torch.tensor([prompt + comp])).logits[0].double() / temperature
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(comp)])


def reference_grads(model, prompts, comps, adv, behaviour, reference, kl_beta, aggregation, temperature):
    """g_i = ∇ of the explicit loss of problem i, float64 [n_problems, P]."""
    params = [p for p in model.parameters() if p.requires_grad]
    group = np.repeat(np.arange(len(GROUP_SIZES)), GROUP_SIZES)
    out = []
    for i, k in enumerate(GROUP_SIZES):
        rows = np.flatnonzero(group == i)
        n_tok = sum(len(comps[j]) for j in rows)
        loss = 0
        for j in rows:
            lp = token_logps(model, prompts[j], comps[j], temperature)
            T = len(comps[j])
            term = adv[j] * torch.exp(lp - lp.detach())  # = A, with ∇ A ∇ log π
            if behaviour is not None:
                term = adv[j] * torch.exp(lp - behaviour[j, :T].double())
            if kl_beta:
                d = reference[j, :T].double() - lp
                term = term - kl_beta * (torch.exp(d) - d - 1)
            nu = 1.0 / n_tok if aggregation == "token-mean" else 1.0 / (k * T)
            loss = loss - nu * term.sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                              for g, p in zip(grads, params)]))
    return torch.stack(out)


CASES = {
    "off-policy": dict(behaviour=True, kl_beta=0.0, aggregation="sequence-mean", temperature=0.5),
    "kl": dict(behaviour=False, kl_beta=0.04, aggregation="sequence-mean", temperature=1.0),
    "both-token-mean": dict(behaviour=True, kl_beta=0.3, aggregation="token-mean", temperature=0.7),
}


@pytest.fixture(scope="module")
def setup():
    model = make_model(tie=True, seed=7)
    rollouts, prompts, comps, rewards = make_rollouts(seed=9)
    g = torch.Generator().manual_seed(3)
    # log-probs of some other policy: the true ones shifted by noise (ratios between ~0.5 and ~2)
    with torch.no_grad():
        true = completion_logps(model, rollouts, torch.arange(len(prompts)))
    shifted = lambda: (true + 0.7 * torch.randn(true.shape, generator=g)) * rollouts.completion_mask
    return model, rollouts, prompts, comps, rewards, shifted(), shifted()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ["naive", "onepass", "gram"])
def test_backends_match_explicit_loss(setup, case, backend):
    model, rollouts, prompts, comps, rewards, behaviour, reference = setup
    c = CASES[case]
    adv = rollouts.advantages("group")
    # fp32 group statistics over <= 8 rewards: a few ulps; 1e-5 ≈ 84 ulps (measured 0.3% of the tolerance)
    np.testing.assert_allclose(adv.numpy(), reference_advantages(rewards, "group"), rtol=1e-5, atol=1e-6)
    batch = SurrogateBatch(rollouts, adv, aggregation=c["aggregation"], temperature=c["temperature"],
                           behaviour_logps=behaviour if c["behaviour"] else None,
                           reference_logps=reference if c["kl_beta"] else None, kl_beta=c["kl_beta"])
    ref = reference_grads(model, prompts, comps, adv.double(), behaviour if c["behaviour"] else None, reference,
                          c["kl_beta"], c["aggregation"], c["temperature"])
    dirs = torch.randn(2, n_params(model), generator=torch.Generator().manual_seed(5))
    impl = {"naive": NaiveGradients(), "onepass": OnePassGradients(), "gram": OnePassGradients(force_gram=True)}
    sig = impl[backend].problem_signals(model, batch, dirs)
    for i, g in enumerate(ref):
        if g.norm() == 0:  # zero-variance and no KL term: nothing to differentiate
            assert sig.norms[i] == 0
            continue
        assert sig.norms[i].item() == pytest.approx(g.norm().item(), rel=REL)
        bound = REL * g.norm().item() * dirs.double().norm(dim=1)
        assert torch.all((sig.dots[i].double() - dirs.double() @ g).abs() <= bound)
    # the KL term makes zero-variance groups live; without it they have no gradient at all
    zero_var = rollouts.zero_variance()
    assert all(ref[i].norm() > 0 for i in np.flatnonzero(zero_var)) == bool(c["kl_beta"])


def test_projected_features_match_projected_reference(setup):
    model, rollouts, prompts, comps, rewards, behaviour, reference = setup
    adv = rollouts.advantages("group")
    batch = SurrogateBatch(rollouts, adv, aggregation="sequence-mean", behaviour_logps=behaviour,
                           reference_logps=reference, kl_beta=0.1)
    ref = reference_grads(model, prompts, comps, adv.double(), behaviour, reference, 0.1, "sequence-mean", 1.0)
    proj = FactoredProjector(256, seed=1, sketch="khatri-rao")
    feats = proj.features(model, batch).double()
    expected = proj.project_flat(model, ref.float()).double()
    assert torch.linalg.norm(feats - expected) <= 1e-4 * torch.linalg.norm(expected)


def test_ratio_at_the_behaviour_policy_is_the_on_policy_gradient(setup):
    """θ = β (the behaviour log-probs are the policy's own, at the same temperature): POPI = on-policy GRPO."""
    model, rollouts, *_ = setup
    rows = torch.arange(rollouts.group.numel())
    with torch.no_grad():
        own = completion_logps(model, rollouts, rows, temperature=0.6)
    adv = rollouts.advantages("group")
    off = SurrogateBatch(rollouts, adv, aggregation="sequence-mean", behaviour_logps=own, temperature=0.6)
    on = SurrogateBatch(rollouts, adv, aggregation="sequence-mean", temperature=0.6)
    dirs = torch.randn(1, n_params(model), generator=torch.Generator().manual_seed(2))
    a, b = (OnePassGradients().problem_signals(model, x, dirs) for x in (off, on))
    # θ = β: the ratio is exp(lp - own) with own recomputed by the same fp32 forward, so it is 1 up to a few ulps of
    # |lp| ~ 5; rtol 1e-6 ≈ 8 fp32 ulps (eps 1.19e-7). Measured: bit-identical on 1 and 2 threads; a wrong
    # temperature or ratio gives >= 1e-2. The same reasoning covers the KL and subset checks below.
    torch.testing.assert_close(a.norms, b.norms, rtol=1e-6, atol=1e-9)
    # a dot can be near 0, so its bound scales with ‖g‖‖d‖ (as test_gradients' REL bound), not a fixed atol
    bound = 1e-6 * b.norms.double() * dirs.double().norm()
    assert torch.all((a.dots[:, 0].double() - b.dots[:, 0].double()).abs() <= bound + 1e-12)
    # and the ratio really is at work: another behaviour policy changes the gradient
    shifted = SurrogateBatch(rollouts, adv, aggregation="sequence-mean", behaviour_logps=own * 1.5, temperature=0.6)
    c = OnePassGradients().problem_signals(model, shifted, dirs)
    assert not torch.allclose(a.norms, c.norms, rtol=1e-3)


def test_kl_at_the_reference_policy_vanishes(setup):
    model, rollouts, *_ = setup
    with torch.no_grad():
        own = completion_logps(model, rollouts, torch.arange(rollouts.group.numel()))
    adv = rollouts.advantages("group")
    kl = SurrogateBatch(rollouts, adv, reference_logps=own, kl_beta=0.5)
    plain = SurrogateBatch(rollouts, adv)
    a, b = (OnePassGradients().problem_signals(model, x, torch.zeros(0, 0)) for x in (kl, plain))
    torch.testing.assert_close(a.norms, b.norms, rtol=1e-6, atol=1e-7)


def test_bad_batches_are_refused(setup):
    _, rollouts, *_ = setup
    with pytest.raises(ValueError, match="aggregation"):
        SurrogateBatch(rollouts, rollouts.advantages(), aggregation="sum")
    with pytest.raises(ValueError, match="reference_logps"):
        SurrogateBatch(rollouts, rollouts.advantages(), kl_beta=0.1)


def test_subset_keeps_each_problems_gradient(setup):
    model, rollouts, prompts, comps, rewards, behaviour, reference = setup
    batch = SurrogateBatch(rollouts, rollouts.advantages("group"), aggregation="sequence-mean",
                           behaviour_logps=behaviour, reference_logps=reference, kl_beta=0.2, temperature=0.8)
    picked = [4, 0, 2]  # out of order on purpose: `subset` follows `select_problems`' row order
    whole = OnePassGradients().problem_signals(model, batch, torch.zeros(0, 0)).norms
    part = OnePassGradients().problem_signals(model, batch.subset(picked), torch.zeros(0, 0)).norms
    torch.testing.assert_close(part, whole[picked], rtol=1e-6, atol=1e-8)
