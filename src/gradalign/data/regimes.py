"""The paper's data regimes, built from the embedded task families (seeded, deterministic), and a chat-model
arithmetic scenario that also draws on reasoning-gym.

Each builder returns a `Scenario`: a pool to select from, a small trusted validation set, a test set and
optional extra test sets (imbalance: the other tasks, to catch forgetting). Validation and test problems
are always clean; no two sets share a prompt. `write_scenario` saves a scenario in the standard problem
format, with a `scenario.json` of its arguments and realised shares, so any method can reuse it.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..fileio import write_json
from ..rewards.corruption import CORRUPTION_KINDS
from .external import (REASONING_GYM_TASKS, SINGLE_DIGIT_COUNT, gsm_symbolic_problems, prompt_text,
                       reasoning_gym_problems, require_reasoning_gym, single_digit_arithmetic)
from .io import save_problems
from .problem import Problem
from .tasks import generate, generate_mix

DEFAULT_FAMILIES = {"add": 1.0, "sub": 1.0}
# the scenarios whose pool has corrupt_fraction corrupted
CORRUPTED_POOLS = ("unreliable-rewards", "gsm-symbolic", "smollm2-coin")
SINGLE_DIGIT_SHARE = 0.5  # of smollm2-arithmetic's mix (and of gsm-symbolic's and smollm2-coin's arithmetic)
# The reasoning-gym tasks SmolLM2-135M-Instruct solves some of the time (pass rates at k = 8, 16 new tokens:
# single-digit 0.42, chain_sum 0.16, basic_arithmetic 0.10; countdown 0.03, left out: docs/benchmarks.md)
SMOLLM2_TASKS = ("basic_arithmetic", "chain_sum")
SKEWED_TARGET, SKEWED_OTHERS = "chain_sum", ("single_digit", "basic_arithmetic")
UTILITY_LABELS = ("useful", "trivial", "unsolvable")
MIXED_KINDS = ("coin", "wrong-answer")
POOL_CORRUPTIONS = (*CORRUPTION_KINDS, "mixed")  # "mixed": half coin flips, half wrong answers
FORMATS = ("jsonl", "parquet")


@dataclass
class Scenario:
    name: str
    pool: list[Problem]
    validation: list[Problem]
    test: list[Problem]
    extra_tests: dict[str, list[Problem]] = field(default_factory=dict)  # name -> held-out test set
    params: dict[str, Any] = field(default_factory=dict)  # the builder's arguments, for scenario.json


def _check_share(name: str, value: float, scenario: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{scenario}: {name} must be in [0, 1] (got {value})")


def _check_others(target: str, others: tuple[str, ...], scenario: str) -> None:
    if not others or target in others:
        raise ValueError(f"{scenario}: others must name families other than the target '{target}' (got {list(others)})")


def _held_out(families: dict[str, float], validation_size: int, test_size: int, seed: int, taken: set[str]):
    """Validation and test sets avoiding the prompts in `taken`, which is extended with theirs."""
    validation = generate_mix(families, validation_size, seed + 1, "val", exclude=taken)
    taken |= {p.prompt for p in validation}
    test = generate_mix(families, test_size, seed + 2, "test", exclude=taken)
    taken |= {p.prompt for p in test}
    return validation, test


def unreliable_rewards(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256,
                       corrupt_fraction: float = 0.5, corruption: str = "coin",
                       families: dict[str, float] | None = None, seed: int = 0) -> Scenario:
    """A `corrupt_fraction` of the pool gets unreliable rewards.

    corruption="coin": each completion's reward is a fixed pseudo-random coin flip of (problem, completion), so a
    corrupted problem's pass rate sits near 0.5 whatever the policy does -- exactly what pass-rate heuristics
    like. corruption="wrong-answer": the verifier checks against a fixed wrong answer.
    """
    params = dict(locals())  # first statement: exactly the arguments, recorded in scenario.json
    _check_share("corrupt_fraction", corrupt_fraction, "unreliable-rewards")
    families = params["families"] = families or DEFAULT_FAMILIES
    pool = generate_mix(families, pool_size, seed, "pool")
    corrupt(pool, corrupt_fraction, corruption, seed)
    validation, test = _held_out(families, validation_size, test_size, seed, {p.prompt for p in pool})
    return Scenario("unreliable-rewards", pool, validation, test, params=params)


def corrupt(pool: list[Problem], fraction: float, corruption: str, seed: int) -> None:
    """Mark a seeded `fraction` of the pool corrupted (in place): its rewards become coin flips ("coin"), the
    verifier against a fixed wrong answer ("wrong-answer"; integer answers), a mostly-right judge ("slips": the
    verifier, wrong on a tenth of the completions), or half coin flips, half wrong answers ("mixed")."""
    if corruption not in POOL_CORRUPTIONS:
        raise ValueError(f"unknown corruption '{corruption}' (choose from: {', '.join(POOL_CORRUPTIONS)})")
    rng = random.Random(f"corrupt:{seed}")
    chosen = rng.sample(pool, int(round(fraction * len(pool))))
    kinds = MIXED_KINDS if corruption == "mixed" else (corruption,)
    for i, p in enumerate(chosen):
        kind = kinds[i % len(kinds)]  # the sample is in random order: alternating kinds split it at random
        p.metadata["corrupted"] = True
        p.metadata["corruption"] = kind
        if kind == "wrong-answer":
            p.metadata["wrong_answer"] = str(int(p.answer) + rng.choice([-10, -2, -1, 1, 2, 10]))


def imbalance(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256, target: str = "sub",
              target_share: float = 0.1, others: tuple[str, ...] = ("add", "sum3"),
              other_test_size: int | None = None, seed: int = 0) -> Scenario:
    """The target task is a small share of the pool; validation and test are the target task only.

    `extra_tests["other-tasks"]` (`other_test_size` problems, default `test_size`) holds out the other
    families: a method that only chases the target may forget them, and this set shows it.
    """
    params = dict(locals())
    _check_share("target_share", target_share, "imbalance")
    _check_others(target, others, "imbalance")
    families = {target: target_share, **{f: (1 - target_share) / len(others) for f in others}}
    pool = generate_mix(families, pool_size, seed, "pool")
    taken = {p.prompt for p in pool}
    validation, test = _held_out({target: 1.0}, validation_size, test_size, seed, taken)
    other_size = test_size if other_test_size is None else other_test_size
    other_tests = generate_mix({f: 1.0 for f in others}, other_size, seed + 3, "test-other", exclude=taken)
    return Scenario("imbalance", pool, validation, test, extra_tests={"other-tasks": other_tests}, params=params)


def low_utility(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256, useful_share: float = 0.2,
                trivial_share: float = 0.5, useful: tuple[str, ...] = ("add", "sub"), seed: int = 0) -> Scenario:
    """Most of the pool is trivial (`a*0=`, `a-a=`: answer 0) or unsolvable (3-digit products); a minority is useful.

    `useful_share` of the pool comes from the `useful` families; of the rest, `trivial_share` is trivial and
    the remainder unsolvable. Each pool problem's role is in ``metadata["utility"]`` (for reports only: the
    selection methods never read it). Validation and test are the useful families only.
    """
    params = dict(locals())
    _check_share("useful_share", useful_share, "low-utility")
    _check_share("trivial_share", trivial_share, "low-utility")
    n_useful = int(round(useful_share * pool_size))
    useful_part = generate_mix({f: 1.0 for f in useful}, n_useful, seed, "pool")
    pool = _with_low_value(useful_part, pool_size, trivial_share, seed, "low-utility")
    validation, test = _held_out({f: 1.0 for f in useful}, validation_size, test_size, seed, {p.prompt for p in pool})
    return Scenario("low-utility", pool, validation, test, params=params)


def _with_low_value(useful: list[Problem], pool_size: int, trivial_share: float, seed: int,
                    scenario: str) -> list[Problem]:
    """`useful` filled up to `pool_size` with trivial (`trivial_share` of the rest) and unsolvable problems, every
    problem labelled in ``metadata["utility"]``, shuffled."""
    n_trivial = int(round(trivial_share * (pool_size - len(useful))))
    parts = {"useful": useful}
    taken = {p.prompt for p in useful}  # `24-24=` is both trivial and a subtraction: keep one
    parts["trivial"] = generate("trivial", n_trivial, seed, "pool-trivial", exclude=taken, split=None)
    if len(parts["trivial"]) < n_trivial:
        raise ValueError(f"{scenario}: the pool needs {n_trivial} trivial problems but the trivial family has only "
                         f"{len(parts['trivial'])} distinct prompts left; lower pool_size or trivial_share")
    taken |= {p.prompt for p in parts["trivial"]}
    parts["unsolvable"] = generate("hard", pool_size - len(useful) - n_trivial, seed, "pool-hard", exclude=taken)
    pool = []
    for label, problems in parts.items():
        for p in problems:
            p.metadata["utility"] = label
        pool += problems
    random.Random(seed).shuffle(pool)
    return pool


def mixed(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256, target: str = "sub",
          target_share: float = 0.1, others: tuple[str, ...] = ("add", "sum3"), useful_share: float = 0.5,
          trivial_share: float = 0.5, corrupt_fraction: float = 0.5, corruption: str = "mixed",
          seed: int = 0) -> Scenario:
    """The three regimes in one pool, as real pools mix them: a minority target task, unreliable rewards and
    low-value problems.

    `useful_share` of the pool comes from the task families: the target family (`target_share` of the pool) and
    the `others` sharing the rest of that part; `corrupt_fraction` of those gets unreliable rewards (`corruption`;
    "mixed": half coin flips, half a fixed wrong answer). The rest of the pool is trivial (`trivial_share` of it)
    or unsolvable. Every pool problem carries all three labels (source, ``corrupted``, ``utility``). Validation and
    test are the clean target family; `extra_tests["other-tasks"]` holds out the others, as in `imbalance`.
    """
    params = dict(locals())
    for name in ("target_share", "useful_share", "trivial_share", "corrupt_fraction"):
        _check_share(name, params[name], "mixed")
    if target_share > useful_share:
        raise ValueError(f"mixed: target_share ({target_share}) must not exceed useful_share ({useful_share}): the "
                         f"target family is part of the useful share")
    _check_others(target, others, "mixed")
    rest = (useful_share - target_share) / useful_share if useful_share else 0.0
    families = {target: 1.0 - rest, **{f: rest / len(others) for f in others}}
    useful = generate_mix(families, int(round(useful_share * pool_size)), seed, "pool")
    corrupt(useful, corrupt_fraction, corruption, seed)
    pool = _with_low_value(useful, pool_size, trivial_share, seed, "mixed")
    taken = {p.prompt for p in pool}
    validation, test = _held_out({target: 1.0}, validation_size, test_size, seed, taken)
    other_tests = generate_mix({f: 1.0 for f in others}, test_size, seed + 3, "test-other", exclude=taken)
    return Scenario("mixed", pool, validation, test, extra_tests={"other-tasks": other_tests}, params=params)


def smollm2_arithmetic(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256, seed: int = 0,
                       single_digit_share: float = SINGLE_DIGIT_SHARE) -> Scenario:
    """Chat-prompted arithmetic easy enough to give SmolLM2-135M-Instruct a real reward signal; run it with
    verifier "task" (each problem's ``metadata["verifier"]`` says how to score it).

    Every set mixes single-digit ``a+b``/``a-b``/``a*b`` (`single_digit_share`) with reasoning-gym's
    basic_arithmetic, chain_sum and countdown (equal thirds of the rest). Only 300 single-digit problems exist:
    when the sets together ask for more, each set's single-digit count shrinks in proportion and reasoning-gym
    fills the gap (scenario.json records the realised shares).
    """
    params = dict(locals())
    _check_share("single_digit_share", single_digit_share, "smollm2-arithmetic")
    require_reasoning_gym("scenario 'smollm2-arithmetic'")
    sets = _arithmetic_sets({"pool": pool_size, "val": validation_size, "test": test_size}, single_digit_share, seed)
    return Scenario("smollm2-arithmetic", sets["pool"], sets["val"], sets["test"], params=params)


def gsm_symbolic(pool_size: int = 256, validation_size: int = 32, test_size: int = 64, seed: int = 0,
                 gsm_share: float = 0.5, corrupt_fraction: float = 0.5, corruption: str = "coin") -> Scenario:
    """GSM8K-style word problems (reasoning-gym's gsm_symbolic) for SmolLM2-135M-Instruct, with the paper's
    unreliable rewards on the pool: a `corrupt_fraction` of it is rewarded by coin flips. Run it with verifier
    "task".

    `gsm_share` of every set is word problems; the rest is `smollm2-arithmetic`'s mix, because the 135M model
    solves almost no word problem (greedy 0 of 64 at 128 new tokens, measured here): without the arithmetic
    there would be no reward signal to select on. Per-source test accuracy shows the word problems apart.
    Validation and test are clean.
    """
    params = dict(locals())
    _check_share("gsm_share", gsm_share, "gsm-symbolic")
    _check_share("corrupt_fraction", corrupt_fraction, "gsm-symbolic")
    require_reasoning_gym("scenario 'gsm-symbolic'")
    sizes = {"pool": pool_size, "val": validation_size, "test": test_size}
    n_words = {split: int(round(gsm_share * size)) for split, size in sizes.items()}
    single_digit = _single_digit_counts({s: sizes[s] - n_words[s] for s in sizes}, SINGLE_DIGIT_SHARE)
    taken: set[str] = set()
    sets = {}
    for split, size in sizes.items():
        words = gsm_symbolic_problems(n_words[split], _task_seed(seed, split, "gsm_symbolic"), exclude=taken,
                                      id_prefix=f"{split}-gsm_symbolic")
        taken |= {prompt_text(p.prompt) for p in words}
        sets[split] = words + _arithmetic_set(split, size - n_words[split], single_digit[split], seed, taken)
        random.Random(f"gsm-symbolic:{seed}:{split}").shuffle(sets[split])
    corrupt(sets["pool"], corrupt_fraction, corruption, seed)
    return Scenario("gsm-symbolic", sets["pool"], sets["val"], sets["test"], params=params)


def smollm2_coin(pool_size: int = 256, validation_size: int = 32, test_size: int = 128, seed: int = 0,
                 corrupt_fraction: float = 0.5, corruption: str = "coin") -> Scenario:
    """The arithmetic SmolLM2-135M-Instruct half-solves, with the paper's unreliable rewards on the pool: half
    single-digit, the rest basic_arithmetic and chain_sum (countdown, 3% pass rate, left out), a `corrupt_fraction`
    of the pool rewarded by `corruption`. Validation and test are clean. Run it with verifier "task"."""
    params = dict(locals())
    _check_share("corrupt_fraction", corrupt_fraction, "smollm2-coin")
    require_reasoning_gym("scenario 'smollm2-coin'")
    sets = _arithmetic_sets({"pool": pool_size, "val": validation_size, "test": test_size}, SINGLE_DIGIT_SHARE, seed,
                            SMOLLM2_TASKS)
    corrupt(sets["pool"], corrupt_fraction, corruption, seed)
    return Scenario("smollm2-coin", sets["pool"], sets["val"], sets["test"], params=params)


def smollm2_skewed(pool_size: int = 256, validation_size: int = 32, test_size: int = 128, seed: int = 0,
                   target_share: float = 0.1) -> Scenario:
    """A skewed mix for SmolLM2-135M-Instruct, as `imbalance` is for the tiny policy: chain_sum (the target) is a
    `target_share` of the pool, single-digit and basic_arithmetic share the rest equally; validation and test are
    chain_sum only, `extra_tests["other-tasks"]` (`test_size` problems) the other two. Rewards are clean. Run it
    with verifier "task"."""
    params = dict(locals())
    _check_share("target_share", target_share, "smollm2-skewed")
    require_reasoning_gym("scenario 'smollm2-skewed'")
    n_target = int(round(target_share * pool_size))
    rest = pool_size - n_target
    taken: set[str] = set()
    pool = _task_set("pool", {SKEWED_TARGET: n_target, **{task: rest // 2 + (k < rest % 2)
                                                          for k, task in enumerate(SKEWED_OTHERS)}}, seed, taken)
    validation = _task_set("val", {SKEWED_TARGET: validation_size}, seed, taken)
    test = _task_set("test", {SKEWED_TARGET: test_size}, seed, taken)
    halves = {task: test_size // 2 + (k < test_size % 2) for k, task in enumerate(SKEWED_OTHERS)}
    others = _task_set("test-other", halves, seed, taken)
    return Scenario("smollm2-skewed", pool, validation, test, extra_tests={"other-tasks": others}, params=params)


def _task_seed(seed: int, split: str, task: str) -> int:
    """reasoning-gym seeds item i with seed + i: hashed seeds keep the sets from replaying one sequence."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{split}:{task}".encode(), digest_size=4).digest(), "big")


def _single_digit_counts(sizes: dict[str, int], share: float) -> dict[str, int]:
    """Single-digit problems per set: `share` of each, all scaled down together if there are not enough."""
    wanted = {split: int(round(share * size)) for split, size in sizes.items()}
    total = sum(wanted.values())
    if total <= SINGLE_DIGIT_COUNT:
        return wanted
    return {split: count * SINGLE_DIGIT_COUNT // total for split, count in wanted.items()}


def _arithmetic_sets(sizes: dict[str, int], single_digit_share: float, seed: int,
                     tasks: tuple[str, ...] = REASONING_GYM_TASKS) -> dict[str, list[Problem]]:
    """Disjoint arithmetic sets of the given sizes (split -> size), `single_digit_share` of each single-digit."""
    single_digit = _single_digit_counts(sizes, single_digit_share)
    taken: set[str] = set()  # prompt texts already used by a set: keeps the sets disjoint
    return {split: _arithmetic_set(split, size, single_digit[split], seed, taken, tasks)
            for split, size in sizes.items()}


def _arithmetic_set(split: str, size: int, n_single_digit: int, seed: int, taken: set[str],
                    tasks: tuple[str, ...] = REASONING_GYM_TASKS) -> list[Problem]:
    """`n_single_digit` single-digit problems, the rest of `size` shared equally by the reasoning-gym `tasks`."""
    rest = size - n_single_digit
    counts = {task: rest // len(tasks) + (k < rest % len(tasks)) for k, task in enumerate(tasks)}
    return _task_set(split, {"single_digit": n_single_digit, **counts}, seed, taken)


def _task_set(split: str, counts: dict[str, int], seed: int, taken: set[str]) -> list[Problem]:
    """`counts[task]` new problems of each task ("single_digit" or a reasoning-gym task), shuffled; `taken` (the
    prompts of the other sets) is extended with theirs, so that the sets stay disjoint."""
    problems: list[Problem] = []
    for task, count in counts.items():
        if task == "single_digit":
            batch = single_digit_arithmetic(count, seed, exclude=taken, id_prefix=f"{split}-single_digit")
        else:
            batch = reasoning_gym_problems(task, count, _task_seed(seed, split, task), exclude=taken,
                                           id_prefix=f"{split}-{task}")
        taken |= {prompt_text(p.prompt) for p in batch}
        problems += batch
    random.Random(f"smollm2-arithmetic:{seed}:{split}").shuffle(problems)
    return problems


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "unreliable-rewards": unreliable_rewards, "imbalance": imbalance, "low-utility": low_utility,
    "mixed": mixed, "smollm2-arithmetic": smollm2_arithmetic, "gsm-symbolic": gsm_symbolic,
    "smollm2-coin": smollm2_coin, "smollm2-skewed": smollm2_skewed,
}


def build_scenario(name: str, **kw) -> Scenario:
    """The named built-in scenario; a keyword the builder does not take is an error, not silently ignored."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario '{name}' (choose from: {', '.join(SCENARIOS)})")
    builder = SCENARIOS[name]
    accepted = inspect.signature(builder).parameters
    unknown = next((k for k in kw if k not in accepted), None)
    if unknown is not None:
        raise ValueError(f"scenario '{name}' has no parameter '{unknown}' (choose from: {', '.join(accepted)})")
    return builder(**kw)


# ----------------------------------------------------------------------------------------------- write


def problem_sets(scenario: Scenario) -> dict[str, list[Problem]]:
    """Every set of a scenario by its file stem: pool, validation, test, test-<name> for each extra test."""
    sets = {"pool": scenario.pool, "validation": scenario.validation, "test": scenario.test}
    sets.update({f"test-{name}": problems for name, problems in scenario.extra_tests.items()})
    return sets


def realised_shares(problems: list[Problem]) -> dict[str, Any]:
    """What a set really contains: corrupted share, share per source, share per utility label (if labelled)."""
    n = max(len(problems), 1)

    def shares(values) -> dict[str, float]:
        return {k: c / n for k, c in sorted(Counter(values).items())}

    out: dict[str, Any] = {"corrupted": sum(p.corrupted for p in problems) / n,
                           "source": shares(p.source for p in problems)}
    if any("utility" in p.metadata for p in problems):
        out["utility"] = shares(p.metadata.get("utility", "unlabelled") for p in problems)
    return out


def write_scenario(scenario: Scenario, directory: str | Path, fmt: str = "jsonl",
                   style: str = "trl") -> dict[str, Path]:
    """Write each non-empty set to `<directory>/<stem>.<fmt>` (see `problem_sets`) and a `scenario.json` with the
    name, builder arguments, sizes and realised shares; returns {stem or "scenario": path}.

    Empty sets are not written (a problem file with no problems would not load back); their size reads 0.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
    directory = Path(directory)
    sets = problem_sets(scenario)
    paths: dict[str, Path] = {}
    for stem, problems in sets.items():
        if problems:
            paths[stem] = directory / f"{stem}.{fmt}"
            save_problems(paths[stem], problems, style=style)
    paths["scenario"] = directory / "scenario.json"
    write_json(paths["scenario"], {
        "name": scenario.name,
        "params": scenario.params,
        "files": {stem: path.name for stem, path in paths.items() if stem != "scenario"},
        "sizes": {stem: len(problems) for stem, problems in sets.items()},
        "shares": {stem: realised_shares(problems) for stem, problems in sets.items()},
    })
    return paths
