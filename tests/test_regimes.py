"""The regime builders (the three regimes and the mixed pool): realised shares, seeding, corruption, disjoint sets, and files written to disk."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from gradalign.data.io import load_problems
from gradalign.data.problem import Problem
from gradalign.data.regimes import (
    Scenario,
    build_scenario,
    imbalance,
    low_utility,
    mixed,
    problem_sets,
    unreliable_rewards,
    write_scenario,
)
from gradalign.data.tasks import FAMILIES, generate
from gradalign.rewards import ProblemReward, get_verifier

SMALL = dict(pool_size=200, validation_size=16, test_size=24)


def rows(problems: list[Problem]) -> list[tuple]:
    return [(p.id, p.prompt, p.answer, p.source, p.metadata) for p in problems]


def all_rows(sc: Scenario) -> dict[str, list[tuple]]:
    return {stem: rows(problems) for stem, problems in problem_sets(sc).items()}


BUILDERS = {
    "unreliable-coin": lambda seed: unreliable_rewards(**SMALL, seed=seed),
    "unreliable-wrong": lambda seed: unreliable_rewards(**SMALL, corruption="wrong-answer", seed=seed),
    "imbalance": lambda seed: imbalance(**SMALL, seed=seed),
    "low-utility": lambda seed: low_utility(**SMALL, seed=seed),
    "mixed": lambda seed: mixed(**SMALL, seed=seed),
}


# ----------------------------------------------------------------------------------------------- shares


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("corruption", ["coin", "wrong-answer", "slips"])
def test_corrupted_fraction_is_exact(fraction, corruption):
    sc = unreliable_rewards(pool_size=150, validation_size=8, test_size=8, corrupt_fraction=fraction,
                            corruption=corruption, seed=1)
    corrupted = [p for p in sc.pool if p.corrupted]
    assert len(corrupted) == round(fraction * 150)
    assert all(p.metadata["corruption"] == corruption for p in corrupted)
    assert all(("wrong_answer" in p.metadata) == (corruption == "wrong-answer") for p in corrupted)
    assert all(p.metadata["wrong_answer"] != p.answer for p in corrupted if corruption == "wrong-answer")


@pytest.mark.parametrize("pool_size,share", [(200, 0.1), (333, 0.12), (1000, 0.05)])
def test_imbalance_target_share_within_one_problem(pool_size, share):
    sc = imbalance(pool_size=pool_size, validation_size=8, test_size=8, target_share=share, seed=2)
    n_target = sum(p.source == "sub" for p in sc.pool)
    assert len(sc.pool) == pool_size
    assert abs(n_target - share * pool_size) <= 1
    assert {p.source for p in sc.pool} == {"sub", "add", "sum3"}


@pytest.mark.parametrize("useful_share,trivial_share", [(0.2, 0.5), (0.1, 0.8), (0.35, 0.3)])
def test_low_utility_shares_per_label(useful_share, trivial_share):
    sc = low_utility(pool_size=400, validation_size=8, test_size=8, useful_share=useful_share,
                     trivial_share=trivial_share, seed=3)
    counts = Counter(p.metadata["utility"] for p in sc.pool)
    n_useful = round(useful_share * 400)
    assert len(sc.pool) == 400
    assert counts["useful"] == n_useful
    assert counts["trivial"] == round(trivial_share * (400 - n_useful))
    assert counts["unsolvable"] == 400 - counts["useful"] - counts["trivial"]
    by_label = {label: {p.source for p in sc.pool if p.metadata["utility"] == label} for label in counts}
    assert by_label == {"useful": {"add", "sub"}, "trivial": {"trivial"}, "unsolvable": {"hard"}}


@pytest.mark.parametrize("seed", [0, 1])
def test_low_utility_default_pool_is_mostly_trivial_or_unsolvable(seed):
    sc = low_utility(seed=seed)
    counts = Counter(p.metadata["utility"] for p in sc.pool)
    assert counts == {"useful": 400, "trivial": 800, "unsolvable": 800}
    assert len({p.prompt for p in sc.pool}) == 2000  # `24-24=` is trivial and a subtraction: drawn once only


def test_low_utility_refuses_more_trivial_problems_than_exist():
    with pytest.raises(ValueError, match="trivial family has only .* distinct prompts") as e:
        low_utility(pool_size=8000, useful_share=0.0, trivial_share=0.5, validation_size=4, test_size=4)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("builder", BUILDERS)
def test_same_seed_same_scenario_other_seed_other_pool(builder):
    first, again, other = BUILDERS[builder](5), BUILDERS[builder](5), BUILDERS[builder](6)
    assert all_rows(first) == all_rows(again)
    assert first.params == again.params
    assert {p.prompt for p in first.pool} != {p.prompt for p in other.pool}


@pytest.mark.parametrize("seed", [0, 3])
def test_mixed_pool_carries_every_regime_with_its_labels(seed):
    """400 problems: useful 0.5 = 200 (target 0.1 of the pool = 40, the others 80 each), half of the useful ones
    corrupted (50 coin, 50 wrong-answer), the rest 100 trivial + 100 unsolvable; validation and test: clean target."""
    sc = mixed(pool_size=400, validation_size=16, test_size=24, seed=seed)
    useful = [p for p in sc.pool if p.metadata["utility"] == "useful"]
    assert Counter(p.metadata["utility"] for p in sc.pool) == {"useful": 200, "trivial": 100, "unsolvable": 100}
    assert Counter(p.source for p in useful) == {"sub": 40, "add": 80, "sum3": 80}
    assert Counter(p.metadata.get("corruption") for p in sc.pool if p.corrupted) == {"coin": 50, "wrong-answer": 50}
    assert all(p.metadata["utility"] == "useful" for p in sc.pool if p.corrupted)  # low-value problems stay clean
    assert {p.source for p in sc.validation} == {p.source for p in sc.test} == {"sub"}
    assert {p.source for p in sc.extra_tests["other-tasks"]} == {"add", "sum3"}


def test_mixed_refuses_a_target_larger_than_its_useful_share():
    with pytest.raises(ValueError, match="target_share .* must not exceed useful_share"):
        mixed(**SMALL, target_share=0.4, useful_share=0.3)


# ----------------------------------------------------------------------------------------------- corruption


def reward_metadata(p: Problem) -> dict:
    return {**p.metadata, "problem_id": p.id}  # what the rollout code hands the reward


@pytest.mark.parametrize("corruption", ["coin", "wrong-answer"])
def test_corruption_applies_only_to_marked_problems(corruption):
    sc = unreliable_rewards(pool_size=120, validation_size=8, test_size=8, corruption=corruption, seed=4)
    reward = ProblemReward(get_verifier("exact"), seed=0)
    for p in sc.pool:
        correct = reward(f"{p.answer}\n", p.answer, reward_metadata(p))
        if not p.corrupted:
            assert correct == 1.0
        elif corruption == "wrong-answer":
            assert correct == 0.0
            assert reward(p.metadata["wrong_answer"], p.answer, reward_metadata(p)) == 1.0
        else:  # a coin: distinct completions (correct answer plus junk lines) get both rewards
            completions = [f"{p.answer}\n{i}" for i in range(40)]
            scores = reward.batch(completions, [p.answer] * 40, [reward_metadata(p)] * 40)
            assert set(scores) == {0.0, 1.0}


@pytest.mark.parametrize("builder", BUILDERS)
def test_held_out_sets_are_clean(builder):
    sc = BUILDERS[builder](0)
    for stem, problems in problem_sets(sc).items():
        if stem != "pool":
            assert problems and not any(p.corrupted for p in problems), stem
            assert all("utility" not in p.metadata for p in problems), stem


# ----------------------------------------------------------------------------------------------- disjoint sets


@pytest.mark.parametrize("builder", BUILDERS)
def test_no_prompt_shared_between_sets(builder):
    sets = problem_sets(BUILDERS[builder](1))
    prompts = {stem: [p.prompt for p in problems] for stem, problems in sets.items()}
    assert all(len(set(ps)) == len(ps) for ps in prompts.values())
    everything = [prompt for ps in prompts.values() for prompt in ps]
    assert len(set(everything)) == len(everything)
    ids = [p.id for problems in sets.values() for p in problems]
    assert len(set(ids)) == len(ids)


def test_imbalance_sets_by_family():
    sc = imbalance(**SMALL, target="add", others=("sub", "mul"), other_test_size=30, seed=0)
    assert {p.source for p in sc.validation} == {p.source for p in sc.test} == {"add"}
    other = sc.extra_tests["other-tasks"]
    assert len(other) == 30 and {p.source for p in other} == {"sub", "mul"}
    assert len(imbalance(**SMALL, seed=0).extra_tests["other-tasks"]) == SMALL["test_size"]


def test_low_utility_held_out_sets_are_useful_families_only():
    sc = low_utility(**SMALL, useful=("add", "mul"), seed=0)
    assert {p.source for p in sc.validation + sc.test} == {"add", "mul"}


def test_trivial_family_has_many_distinct_correct_prompts():
    problems = generate("trivial", 600, seed=0, split=None)
    assert len(problems) == 600 and len({p.prompt for p in problems}) == 600
    for p in problems:  # the prompts are plain integer arithmetic whose answer is 0
        assert str(int(eval(p.prompt.rstrip("=")))) == p.answer == "0"  # noqa: S307 (our own generated strings)
    rng = random.Random(0)
    assert len({FAMILIES["trivial"](rng)[0] for _ in range(50000)}) >= 2900  # room for default-size pools


# ----------------------------------------------------------------------------------------------- build_scenario


def test_build_scenario_all_names_and_loop_keywords():
    kw = dict(pool_size=60, validation_size=8, test_size=8, seed=0)
    assert build_scenario("unreliable-rewards", corrupt_fraction=0.5, **kw).name == "unreliable-rewards"
    assert build_scenario("imbalance", **kw).extra_tests["other-tasks"]
    assert build_scenario("low-utility", trivial_share=0.3, **kw).name == "low-utility"


def test_build_scenario_unknown_keyword_names_scenario_and_keyword():
    with pytest.raises(ValueError) as e:
        build_scenario("imbalance", pool_size=60, corrupt_fraction=0.5)
    message = str(e.value)
    assert "'imbalance'" in message and "'corrupt_fraction'" in message and "\n" not in message
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        build_scenario("nope")


@pytest.mark.parametrize("call", [
    lambda: unreliable_rewards(corrupt_fraction=1.5),
    lambda: imbalance(target_share=-0.1),
    lambda: imbalance(target="add", others=("add", "sum3")),
    lambda: low_utility(trivial_share=2.0),
])
def test_bad_arguments_fail_in_one_line(call):
    with pytest.raises(ValueError) as e:
        call()
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_write_scenario_round_trip(builder, fmt, tmp_path):
    sc = BUILDERS[builder](7)
    paths = write_scenario(sc, tmp_path / "sc", fmt=fmt)
    sets = problem_sets(sc)
    assert set(paths) == set(sets) | {"scenario"}
    for stem, problems in sets.items():
        assert paths[stem].name == f"{stem}.{fmt}"
        assert rows(load_problems(paths[stem])) == rows(problems)
    info = json.loads(paths["scenario"].read_text())
    assert info["name"] == sc.name
    assert info["params"]["seed"] == 7 and info["params"]["pool_size"] == SMALL["pool_size"]
    assert info["sizes"] == {stem: len(problems) for stem, problems in sets.items()}
    assert not list((tmp_path / "sc").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_scenario_json_has_realised_shares(tmp_path):
    unreliable = unreliable_rewards(**SMALL, corrupt_fraction=0.3, seed=0)
    shares = json.loads(write_scenario(unreliable, tmp_path / "u")["scenario"].read_text())["shares"]
    assert shares["pool"]["corrupted"] == pytest.approx(0.3) and shares["validation"]["corrupted"] == 0.0
    assert shares["pool"]["source"] == {"add": 0.5, "sub": 0.5}

    info = json.loads(write_scenario(imbalance(**SMALL, seed=0), tmp_path / "i")["scenario"].read_text())
    assert info["shares"]["pool"]["source"]["sub"] == pytest.approx(0.1)
    assert info["shares"]["test-other-tasks"]["source"] == {"add": 0.5, "sum3": 0.5}
    assert info["files"]["test-other-tasks"] == "test-other-tasks.jsonl"

    utility = json.loads(write_scenario(low_utility(**SMALL, seed=0), tmp_path / "l")["scenario"].read_text())
    assert utility["shares"]["pool"]["utility"] == {"trivial": 0.4, "unsolvable": 0.4, "useful": 0.2}
    assert utility["params"]["trivial_share"] == 0.5


def test_write_scenario_skips_empty_sets_and_bad_format(tmp_path):
    sc = unreliable_rewards(pool_size=20, validation_size=0, test_size=4, seed=0)
    paths = write_scenario(sc, tmp_path)
    assert "validation" not in paths and not (tmp_path / "validation.jsonl").exists()
    assert json.loads(paths["scenario"].read_text())["sizes"]["validation"] == 0
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        write_scenario(sc, tmp_path, fmt="csv")
