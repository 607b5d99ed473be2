"""Selection methods of the registry, on hand-made candidates; expectations are written out by hand or computed
with plain numpy sorting (never with the scorers under test)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gradalign.selection import REGISTRY, Candidates, SelectionOptions, get_method, select

GRADIENT_METHODS = ["gradalign", "gradalign-z", "gradalign-lfdr", "gradalign-zcos", "gradalign-dot", "negalign", "norm", "selfalign", "align-x-learnability"]
UNIFORM_METHODS = ["random", "passrate-band", "nonzero-variance"]
ALL_METHODS = GRADIENT_METHODS + ["accgreedy", "consistent"] + UNIFORM_METHODS + ["full"]


def candidates() -> Candidates:
    """8 candidates; c6 and c7 are zero-variance (p = 1 and p = 0). Their gradient fields hold garbage on
    purpose: the zero-variance rule, not these numbers, must decide how they are scored."""
    return Candidates(
        ids=[f"c{i}" for i in range(8)],
        pass_rate=np.array([0.25, 0.5, 0.75, 0.125, 0.375, 0.875, 1.0, 0.0]),
        zero_variance=np.array([False] * 6 + [True, True]),
        norm=np.array([3.0, 1.0, 4.0, 1.5, 9.0, 2.0, 50.0, 60.0]),
        cos_val=np.array([0.9, -0.2, 0.1, 0.5, -0.7, 0.3, 0.95, -0.95]),
        dot_val=np.array([0.5, -1.0, 2.0, 0.25, -3.0, 1.0, 9.0, -9.0]),
        cos_self=np.array([-0.1, 0.8, 0.2, 0.6, 0.0, -0.4, 0.99, 0.99]),
        completion_rewards=np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0],
                                     [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=float),
        completion_dots=np.array([[0.3, 0.1, 0.05, 0.05], [1.0, -1.0, 0.5, -1.5], [2.0, -1.0, 0.5, 0.5],
                                  [0.1, 0.2, -0.05, 0.0], [-1.0, -1.0, -0.5, -0.5], [0.4, 0.3, 0.2, 0.1],
                                  [5.0, 4.0, 0.0, 0.0], [-5.0, 0.0, 0.0, 0.0]]),
    )


def run(name: str, c: Candidates, n: int, seed: int = 0, opts: SelectionOptions | None = None) -> list[int]:
    scored = get_method(name).score(c, opts or SelectionOptions())
    return select(scored, n, np.random.default_rng(seed)).tolist()


def ranking(values, allowed) -> list[int]:
    """Indices in `allowed`, by descending value (plain Python; test data has no ties)."""
    return sorted(allowed, key=lambda i: -values[i])


def test_registry_has_every_method():
    assert set(ALL_METHODS) <= set(REGISTRY)
    for name in ALL_METHODS:
        assert REGISTRY[name].name == name and get_method(name) is REGISTRY[name]
    assert not REGISTRY["full"].needs_rollouts
    assert all(REGISTRY[m].needs_rollouts for m in ALL_METHODS if m != "full")
    for m in ("gradalign", "gradalign-dot", "negalign", "align-x-learnability"):
        assert {"gradients", "validation"} <= REGISTRY[m].needs
    assert "validation" not in REGISTRY["norm"].needs and "gradients" in REGISTRY["norm"].needs
    assert "self" in REGISTRY["selfalign"].needs and "validation" not in REGISTRY["selfalign"].needs
    for m in ["accgreedy"] + UNIFORM_METHODS:
        assert "gradients" not in REGISTRY[m].needs


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError) as err:
        get_method("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in REGISTRY:
        assert name in msg


LIVE = list(range(6))  # the non-zero-variance candidates


@pytest.mark.parametrize("name, field, sign", [
    ("gradalign", "cos_val", 1), ("gradalign-dot", "dot_val", 1), ("negalign", "cos_val", -1),
    ("norm", "norm", 1), ("selfalign", "cos_self", 1),
])
def test_gradient_methods_rank_by_their_signal(name, field, sign):
    c = candidates()
    values = sign * getattr(c, field)
    expected = ranking(values, LIVE)
    assert run(name, c, 8) == expected  # zero-variance excluded by default, so only 6 come back
    assert run(name, c, 3) == expected[:3]


def test_gradalign_explicit_orders():
    c = candidates()
    assert run("gradalign", c, 3) == [0, 3, 5]  # cos 0.9, 0.5, 0.3
    assert run("negalign", c, 3) == [4, 1, 2]  # cos -0.7, -0.2, 0.1
    assert run("gradalign-dot", c, 2) == [2, 5]  # dot 2.0, 1.0
    assert run("norm", c, 2) == [4, 2]  # norm 9, 4
    assert run("selfalign", c, 2) == [1, 3]  # cos_self 0.8, 0.6


def test_align_x_learnability():
    c = candidates()
    p = c.pass_rate
    values = [c.cos_val[i] * 4 * p[i] * (1 - p[i]) for i in range(8)]
    assert run("align-x-learnability", c, 8) == ranking(values, LIVE)
    # scores themselves
    scored = get_method("align-x-learnability").score(c, SelectionOptions())
    np.testing.assert_allclose(scored.scores[:6], values[:6], rtol=1e-12)  # float64, 3 products: <= 3 ulps (2.2e-16)
    # a well-aligned but nearly-solved problem loses to a less aligned, learnable one
    two = Candidates(ids=["a", "b"], pass_rate=np.array([0.95, 0.5]), zero_variance=np.array([False, False]),
                     cos_val=np.array([0.9, 0.5]))
    assert run("align-x-learnability", two, 1) == [1]  # 0.9·0.19 = 0.171 < 0.5·1 = 0.5
    assert run("gradalign", two, 1) == [0]


def test_accgreedy_ascending_distance_to_half():
    c = candidates()
    got = run("accgreedy", c, 8)
    assert sorted(got) == list(range(8))  # every candidate eligible, zero-variance included
    distance = [abs(c.pass_rate[i] - 0.5) for i in got]
    assert distance == sorted(distance)
    assert got[:2] == [1, 4]  # |p - 0.5| = 0, 0.125
    assert set(got[2:4]) == {0, 2}  # p = 0.25 and 0.75 tie at 0.25 (tie broken by the seed; see below)
    assert set(got[4:6]) == {3, 5}  # p = 0.125 and 0.875
    assert set(got[-2:]) == {6, 7}  # zero-variance problems are allowed but last (|p - 0.5| = 0.5)


def test_consistent_draws_uniformly_among_the_groups_that_can_teach_then_proven_noise():
    c = candidates()
    c.inconsistent = np.array([False, True, False, False, True, False, False, False])
    teach, noise = {0, 2, 3, 5}, {1, 4}
    firsts = set()
    for seed in range(60):
        got = run("consistent", c, 8, seed=seed)
        assert set(got[:4]) == teach and set(got[4:]) == noise  # zero-variance groups never
        firsts.add(got[0])
    assert firsts == teach  # uniform: every teaching group comes first for some seed
    c.inconsistent = None  # consistency unknown: uniform among the nonzero-variance, as nonzero-variance
    assert set(run("consistent", c, 8)) == teach | noise


def test_accgreedy_ties_broken_by_seed():
    c = Candidates(ids=list("abcd"), pass_rate=np.array([0.25, 0.75, 0.5, 0.25]), zero_variance=np.zeros(4, bool))
    firsts = set()
    for seed in range(40):
        got = run("accgreedy", c, 4, seed=seed)
        assert got[0] == 2 and set(got[1:]) == {0, 1, 3}
        firsts.add(got[1])
    assert firsts == {0, 1, 3}  # every tied candidate comes first for some seed


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_zero_variance_excluded_by_default(name):
    c = candidates()
    got = run(name, c, 8)
    assert len(got) == 6 and not {6, 7} & set(got)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_zero_variance_score_zero_option(name):
    c = candidates()
    opts = SelectionOptions(zero_variance="score-zero")
    scored = get_method(name).score(c, opts)
    assert scored.eligible.all()
    assert scored.scores[6] == 0.0 and scored.scores[7] == 0.0  # garbage signals ignored
    got = run(name, c, 8, opts=opts)
    assert sorted(got) == list(range(8))
    pos = {i: k for k, i in enumerate(got)}
    live_scores = np.asarray(scored.scores)[:6]
    for i in range(6):  # zero-variance (score 0) outrank exactly the negatively scored live candidates
        if live_scores[i] < 0:
            assert pos[i] > pos[6] and pos[i] > pos[7]
        elif live_scores[i] > 0:
            assert pos[i] < pos[6] and pos[i] < pos[7]


def test_score_zero_outranks_negative_alignment_explicitly():
    c = candidates()
    got = run("gradalign", c, 8, opts=SelectionOptions(zero_variance="score-zero"))
    assert got[:4] == [0, 3, 5, 2]  # cos 0.9, 0.5, 0.3, 0.1
    assert set(got[4:6]) == {6, 7}  # the two zero-variance problems at score 0
    assert got[6:] == [1, 4]  # cos -0.2, -0.7


def test_unknown_zero_variance_option_raises():
    with pytest.raises(ValueError, match="score-zero"):
        get_method("gradalign").score(candidates(), SelectionOptions(zero_variance="keep"))


def test_passrate_band_default_and_option():
    c = candidates()
    # default band 0.2..0.8 (inclusive): p = 0.25, 0.5, 0.75, 0.375
    for seed in range(20):
        got = run("passrate-band", c, 10, seed=seed)
        assert sorted(got) == [0, 1, 2, 4]
        assert set(run("passrate-band", c, 2, seed=seed)) <= {0, 1, 2, 4}
    opts = SelectionOptions(passrate_band=(0.5, 0.875))  # inclusive on both ends
    assert sorted(run("passrate-band", c, 10, opts=opts)) == [1, 2, 5]
    opts = SelectionOptions(passrate_band=(0.0, 0.125))
    assert sorted(run("passrate-band", c, 10, opts=opts)) == [3, 7]


def test_nonzero_variance_uniform_among_disagreeing_groups():
    c = candidates()
    expected = [i for i in range(8) if 0 < c.pass_rate[i] < 1]
    for seed in range(20):
        assert sorted(run("nonzero-variance", c, 10, seed=seed)) == expected
        assert set(run("nonzero-variance", c, 3, seed=seed)) <= set(expected)


def test_random_draws_from_all():
    c = candidates()
    assert sorted(run("random", c, 100)) == list(range(8))  # zero-variance included
    got = run("random", c, 5)
    assert len(got) == len(set(got)) == 5


def test_fewer_eligible_than_n():
    c = candidates()
    assert len(run("gradalign", c, 100)) == 6
    assert len(run("passrate-band", c, 100)) == 4
    none_ok = Candidates(ids=["a", "b"], pass_rate=np.array([1.0, 0.0]), zero_variance=np.array([True, True]),
                         cos_val=np.array([0.0, 0.0]))
    assert run("gradalign", none_ok, 5) == []
    assert run("nonzero-variance", none_ok, 5) == []


def big_candidates(n: int = 60) -> Candidates:
    g = np.random.default_rng(123)
    p = g.integers(1, 8, size=n) / 8  # 0 < p < 1: every candidate eligible for every uniform rule
    return Candidates(ids=[str(i) for i in range(n)], pass_rate=p, zero_variance=np.zeros(n, bool),
                      cos_val=g.normal(size=n), norm=g.random(n), dot_val=g.normal(size=n), cos_self=g.normal(size=n))


@pytest.mark.parametrize("name", UNIFORM_METHODS)
def test_uniform_seeded(name):
    c = big_candidates()
    opts = SelectionOptions(passrate_band=(0.0, 1.0))
    a = run(name, c, 10, seed=1, opts=opts)
    assert a == run(name, c, 10, seed=1, opts=opts)
    assert a != run(name, c, 10, seed=2, opts=opts)
    assert len(set(a)) == 10


@pytest.mark.parametrize("name", ["gradalign", "norm", "accgreedy"])
def test_top_rules_do_not_depend_on_seed_without_ties(name):
    c = big_candidates()
    c.pass_rate = np.linspace(0.5, 0.99, len(c))  # one-sided, so every |p - 0.5| is distinct
    assert run(name, c, 10, seed=1) == run(name, c, 10, seed=99)


@pytest.mark.parametrize("name", UNIFORM_METHODS)
def test_uniform_methods_are_uniform(name):
    """10 eligible candidates, draw 3, 3000 seeds: each should be picked ~900 times (sd ≈ 25); bounds ±15%.
    First-place frequency too (~300 each, sd ≈ 16; bounds ±25%)."""
    n, k, trials = 10, 3, 3000
    c = Candidates(ids=[str(i) for i in range(n)], pass_rate=np.full(n, 0.5), zero_variance=np.zeros(n, bool))
    counts, firsts = Counter(), Counter()
    for seed in range(trials):
        got = run(name, c, k, seed=seed)
        assert len(set(got)) == k
        counts.update(got)
        firsts[got[0]] += 1
    expected = trials * k / n
    for i in range(n):
        assert 0.85 * expected <= counts[i] <= 1.15 * expected, counts
        assert 0.75 * trials / n <= firsts[i] <= 1.25 * trials / n, firsts


def test_select_rejects_unknown_rule():
    from gradalign.selection import Scored
    with pytest.raises(ValueError):
        select(Scored(np.zeros(2), np.ones(2, bool), rule="bottom"), 1, np.random.default_rng(0))
