"""Chat-model problem builders (single-digit arithmetic, reasoning-gym tasks) and the smollm2-arithmetic scenario."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from gradalign.data.external import (EASY_CONFIGS, REASONING_GYM_TASKS, SINGLE_DIGIT_COUNT, gsm_symbolic_problems,
                                     prompt_text, reasoning_gym_problems, single_digit_arithmetic)
from gradalign.data.io import load_problems
from gradalign.data.regimes import build_scenario, problem_sets, write_scenario
from gradalign.rewards import get_verifier

needs_reasoning_gym = pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None,
                                         reason="reasoning-gym is not installed (pip install reasoning-gym==0.1.25)")


def as_dicts(problems):
    return [(p.id, p.prompt, p.answer, p.source, p.metadata) for p in problems]


# ---------------------------------------------------------------------------------------- single digit


def test_single_digit_arithmetic_is_right_distinct_and_seeded():
    problems = single_digit_arithmetic(120, seed=3)
    assert len(problems) == 120 and len({prompt_text(p.prompt) for p in problems}) == 120
    for p in problems:
        (message,) = p.prompt
        a, op, b = re.fullmatch(r"What is (\d) ([-+*]) (\d)\? Answer with the number only\.", message["content"]).groups()
        assert message["role"] == "user" and p.answer == str(eval(f"{a}{op}{b}"))  # test-only eval of digits
        assert p.source == "single_digit" and p.metadata == {"verifier": "number"}
    assert as_dicts(single_digit_arithmetic(120, seed=3)) == as_dicts(problems)
    assert [p.prompt for p in single_digit_arithmetic(120, seed=4)] != [p.prompt for p in problems]


def test_single_digit_arithmetic_exclude_and_exhaustion():
    first = single_digit_arithmetic(100, seed=0)
    rest = single_digit_arithmetic(SINGLE_DIGIT_COUNT - 100, seed=0, exclude={prompt_text(p.prompt) for p in first})
    assert not {prompt_text(p.prompt) for p in first} & {prompt_text(p.prompt) for p in rest}
    with pytest.raises(ValueError, match="only 300 new problems of 301"):
        single_digit_arithmetic(SINGLE_DIGIT_COUNT + 1, seed=0)


# -------------------------------------------------------------------------------------- reasoning-gym


@needs_reasoning_gym
@pytest.mark.parametrize("task", REASONING_GYM_TASKS)
def test_reasoning_gym_problems_are_distinct_seeded_chat_problems(task):
    problems = reasoning_gym_problems(task, 40, seed=11)
    assert len(problems) == 40 and len({prompt_text(p.prompt) for p in problems}) == 40
    assert len({p.id for p in problems}) == 40 and all(p.source == task for p in problems)
    assert all(len(p.prompt) == 1 and p.prompt[0]["role"] == "user" for p in problems)
    assert as_dicts(reasoning_gym_problems(task, 40, seed=11)) == as_dicts(problems)
    assert as_dicts(reasoning_gym_problems(task, 40, seed=12_345)) != as_dicts(problems)
    others = reasoning_gym_problems(task, 20, seed=11, exclude={prompt_text(p.prompt) for p in problems})
    assert not {prompt_text(p.prompt) for p in others} & {prompt_text(p.prompt) for p in problems}


@needs_reasoning_gym
def test_reasoning_gym_metadata_says_how_to_verify():
    for p in reasoning_gym_problems("countdown", 30, seed=0):
        assert p.metadata["verifier"] == "countdown"
        assert 2 <= len(p.metadata["numbers"]) <= 3 and all(1 <= n <= 9 for n in p.metadata["numbers"])
        assert 1 <= p.metadata["target"] <= 50
    for p in reasoning_gym_problems("chain_sum", 10, seed=0):
        assert p.metadata["verifier"] == "number" and p.prompt[0]["content"].endswith("Answer with the number only.")


@needs_reasoning_gym
def test_reasoning_gym_problems_errors():
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'leg_counting'"):
        reasoning_gym_problems("leg_counting", 1, seed=0)
    with pytest.raises(ValueError, match="gave only"):  # one term of one digit: 10 distinct prompts
        reasoning_gym_problems("chain_sum", 11, seed=0, min_terms=1, max_terms=1)


def perturbed(task: str, gold: str) -> list[str]:
    if task == "countdown":  # right numbers but wrong value; a number too many
        return [f"-({gold})", f"{gold} + 1"]
    # Off by one. (chain_sum's own scorer is laxer than exact match on formatting: "00" counts as "0" there.)
    return [str(int(gold) + 1), str(int(gold) - 1)]


@needs_reasoning_gym
@pytest.mark.parametrize("task", REASONING_GYM_TASKS)
def test_reasoning_gym_scorer_agrees_with_our_verifier(task):
    import reasoning_gym

    verifier = get_verifier("task")
    for p in reasoning_gym_problems(task, 60, seed=5):
        dataset = reasoning_gym.create_dataset(task, seed=p.metadata["rg_seed"], size=p.metadata["rg_index"] + 1,
                                               **EASY_CONFIGS[task])
        entry = dataset[p.metadata["rg_index"]]
        assert entry["answer"] == p.answer
        assert dataset.score_answer(p.answer, entry) == 1.0
        assert verifier(p.answer, p.answer, p.metadata) == 1.0
        for wrong in perturbed(task, p.answer):
            assert dataset.score_answer(wrong, entry) < 1.0
            assert verifier(wrong, p.answer, p.metadata) == 0.0, (wrong, p.metadata)


# ------------------------------------------------------------------------------------------- scenario

SIZES = dict(pool_size=60, validation_size=12, test_size=24)


@needs_reasoning_gym
def test_smollm2_arithmetic_scenario_mixes_disjoint_sets():
    scenario = build_scenario("smollm2-arithmetic", **SIZES, seed=0)  # the keywords the loop passes
    sets = problem_sets(scenario)
    assert [len(s) for s in sets.values()] == [60, 12, 24]
    everything = [p for problems in sets.values() for p in problems]
    assert len({p.id for p in everything}) == len(everything)
    assert len({prompt_text(p.prompt) for p in everything}) == len(everything)  # no prompt shared
    for problems in sets.values():
        sources = [p.source for p in problems]
        assert sources.count("single_digit") == len(problems) // 2
        assert set(sources) == {"single_digit", *REASONING_GYM_TASKS}
    verifier = get_verifier("task")
    assert verifier.batch([p.answer for p in everything], [p.answer for p in everything],
                          [p.metadata for p in everything]) == [1.0] * len(everything)
    again = build_scenario("smollm2-arithmetic", **SIZES, seed=0)
    assert as_dicts(again.pool + again.test) == as_dicts(scenario.pool + scenario.test)
    other = build_scenario("smollm2-arithmetic", **SIZES, seed=1)
    assert as_dicts(other.pool) != as_dicts(scenario.pool)


@needs_reasoning_gym
def test_smollm2_arithmetic_shrinks_the_single_digit_share_when_needed(tmp_path):
    scenario = build_scenario("smollm2-arithmetic", pool_size=600, validation_size=0, test_size=100, seed=0)
    single = [p for p in scenario.pool + scenario.test if p.source == "single_digit"]
    assert len(single) == SINGLE_DIGIT_COUNT - 1  # 300 * 300 // 350 + 300 * 50 // 350, rounded down each
    assert len(scenario.pool) == 600 and len(scenario.test) == 100
    paths = write_scenario(scenario, tmp_path)
    loaded = load_problems(paths["test"])
    assert [(p.prompt, p.answer, p.metadata) for p in loaded] == [(p.prompt, p.answer, p.metadata) for p in scenario.test]


def test_smollm2_arithmetic_without_reasoning_gym(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # makes `import reasoning_gym` fail
    with pytest.raises(ValueError, match=r"^scenario 'smollm2-arithmetic' needs reasoning-gym: pip install "):
        build_scenario("smollm2-arithmetic", **SIZES, seed=0)
    with pytest.raises(ValueError, match=r"^task 'countdown' needs reasoning-gym"):
        reasoning_gym_problems("countdown", 1, seed=0)


def random_expression(numbers: list[int], rng) -> str:
    """An expression over a shuffled (sometimes shortened) copy of `numbers`, random operators and parentheses."""
    numbers = rng.sample(numbers, len(numbers) - (rng.random() < 0.2))
    text = str(numbers[0])
    for n in numbers[1:]:
        op = rng.choice("+-*/")
        text = f"({text}) {op} {n}" if rng.random() < 0.4 else f"{text} {op} {n}"
    return f"-{text}" if rng.random() < 0.1 else text


@needs_reasoning_gym
def test_countdown_verifier_agrees_with_reasoning_gym_on_random_attempts():
    import random

    import reasoning_gym

    dataset = reasoning_gym.create_dataset("countdown", seed=0, size=100, **EASY_CONFIGS["countdown"])
    verifier, rng, solved = get_verifier("countdown"), random.Random(0), 0
    for entry in dataset:
        for _ in range(10):
            attempt = random_expression(entry["metadata"]["numbers"], rng)
            ours = verifier(attempt, entry["answer"], entry["metadata"])
            assert ours == float(dataset.score_answer(attempt, entry) == 1.0), (attempt, entry["metadata"])
            solved += ours
    assert solved > 50  # the comparison covered correct attempts too, not only wrong ones


# ---------------------------------------------------------------------------------------- gsm-symbolic


@needs_reasoning_gym
def test_gsm_symbolic_answers_are_what_reasoning_gym_scores_correct():
    import reasoning_gym
    problems = gsm_symbolic_problems(20, seed=11)
    dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=11, size=200)
    math = get_verifier("math")
    try:
        for p in problems:
            item = dataset[p.metadata["rg_index"]]
            assert p.source == "gsm_symbolic" and p.metadata["verifier"] == "math"
            assert dataset.score_answer(p.answer, item) == 1.0  # reasoning-gym's own scorer agrees with the label
            # the math verifier reads a chat model's sentence, and refuses a wrong number
            assert math.batch([f"The answer is {p.answer}.", f"The answer is {int(p.answer) + 1}."],
                              [p.answer, p.answer]) == [1.0, 0.0]
    finally:
        math.close()


@needs_reasoning_gym
def test_gsm_symbolic_scenario_corrupts_only_the_pool_and_keeps_sets_disjoint():
    kw = dict(pool_size=80, validation_size=16, test_size=24, gsm_share=0.5, corrupt_fraction=0.25)
    scenario = build_scenario("gsm-symbolic", seed=2, **kw)
    sets = problem_sets(scenario)
    keys = [{prompt_text(p.prompt) for p in problems} for problems in sets.values()]
    assert sum(map(len, keys)) == len(set().union(*keys)) == 80 + 16 + 24  # distinct within and across sets
    assert sum(p.corrupted for p in scenario.pool) == 20
    assert not any(p.corrupted for p in scenario.validation + scenario.test)
    for problems, size in ((scenario.pool, 80), (scenario.validation, 16), (scenario.test, 24)):
        assert sum(p.source == "gsm_symbolic" for p in problems) == size // 2
    again = build_scenario("gsm-symbolic", seed=2, **kw)
    assert as_dicts(again.pool) == as_dicts(scenario.pool)  # seeded
    other = build_scenario("gsm-symbolic", seed=3, **kw)
    assert as_dicts(other.pool) != as_dicts(scenario.pool)
    with pytest.raises(ValueError, match="gsm_share must be in"):
        build_scenario("gsm-symbolic", gsm_share=1.5)


# ------------------------------------------------------------------------------ the real-model preset's mixes


def distinct_across(sets) -> bool:
    keys = [{prompt_text(p.prompt) for p in problems} for problems in sets.values()]
    return sum(map(len, keys)) == len(set().union(*keys)) == sum(len(problems) for problems in sets.values())


@needs_reasoning_gym
@pytest.mark.parametrize("corruption", ["coin", "mixed"])
def test_smollm2_coin_is_the_solvable_mix_with_a_corrupted_pool(corruption):
    kw = dict(pool_size=80, validation_size=16, test_size=24, corrupt_fraction=0.5, corruption=corruption)
    scenario = build_scenario("smollm2-coin", seed=4, **kw)
    sets = problem_sets(scenario)
    assert distinct_across(sets) and [len(s) for s in sets.values()] == [80, 16, 24]
    for problems in sets.values():  # half single-digit; countdown, which the model almost never solves, left out
        sources = [p.source for p in problems]
        assert sources.count("single_digit") == len(problems) // 2
        assert set(sources) == {"single_digit", "basic_arithmetic", "chain_sum"}
    assert sum(p.corrupted for p in scenario.pool) == 40
    assert not any(p.corrupted for p in scenario.validation + scenario.test)
    kinds = {p.metadata["corruption"] for p in scenario.pool if p.corrupted}
    assert kinds == ({"coin", "wrong-answer"} if corruption == "mixed" else {"coin"})
    assert as_dicts(build_scenario("smollm2-coin", seed=4, **kw).pool) == as_dicts(scenario.pool)  # seeded
    assert as_dicts(build_scenario("smollm2-coin", seed=5, **kw).pool) != as_dicts(scenario.pool)


@needs_reasoning_gym
def test_smollm2_skewed_keeps_the_target_a_minority_of_the_pool_and_all_of_validation_and_test():
    scenario = build_scenario("smollm2-skewed", pool_size=90, validation_size=12, test_size=20, target_share=0.2,
                              seed=1)
    sets = problem_sets(scenario)
    assert distinct_across(sets) and [len(s) for s in sets.values()] == [90, 12, 20, 20]
    pool = [p.source for p in scenario.pool]
    assert pool.count("chain_sum") == 18 and pool.count("single_digit") == pool.count("basic_arithmetic") == 36
    assert {p.source for p in scenario.validation + scenario.test} == {"chain_sum"}
    others = sorted(p.source for p in scenario.extra_tests["other-tasks"])
    assert others == ["basic_arithmetic"] * 10 + ["single_digit"] * 10
    assert not any(p.corrupted for problems in sets.values() for p in problems)
    with pytest.raises(ValueError, match="smollm2-skewed: target_share must be in"):
        build_scenario("smollm2-skewed", target_share=-0.1)
