"""The paper's data regimes, built from the embedded task families (seeded, deterministic).

Each builder returns a `Scenario`: a pool to select from, a small trusted validation set and a test set.
Validation and test problems are always clean; pool, validation and test never share a prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .problem import Problem
from .tasks import generate, generate_mix

DEFAULT_FAMILIES = {"add": 1.0, "sub": 1.0}


@dataclass
class Scenario:
    name: str
    pool: list[Problem]
    validation: list[Problem]
    test: list[Problem]


def _held_out(families: dict[str, float], validation_size: int, test_size: int, seed: int, taken: set[str]):
    validation = generate_mix(families, validation_size, seed + 1, "val", exclude=taken)
    taken |= {p.prompt for p in validation}
    test = generate_mix(families, test_size, seed + 2, "test", exclude=taken)
    return validation, test


def unreliable_rewards(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256,
                       corrupt_fraction: float = 0.5, corruption: str = "coin",
                       families: dict[str, float] | None = None, seed: int = 0) -> Scenario:
    """A `corrupt_fraction` of the pool gets unreliable rewards.

    corruption="coin": each completion's reward is a fixed pseudo-random coin flip of (problem, completion), so a
    corrupted problem's pass rate sits near 0.5 whatever the policy does -- exactly what pass-rate heuristics
    like. corruption="wrong-answer": the verifier checks against a fixed wrong answer.
    """
    if corruption not in ("coin", "wrong-answer"):
        raise ValueError(f"unknown corruption '{corruption}' (choose from: coin, wrong-answer)")
    families = families or DEFAULT_FAMILIES
    pool = generate_mix(families, pool_size, seed, "pool")
    rng = random.Random(f"corrupt:{seed}")
    for p in rng.sample(pool, int(round(corrupt_fraction * len(pool)))):
        p.metadata["corrupted"] = True
        p.metadata["corruption"] = corruption
        if corruption == "wrong-answer":
            p.metadata["wrong_answer"] = str(int(p.answer) + rng.choice([-10, -2, -1, 1, 2, 10]))
    validation, test = _held_out(families, validation_size, test_size, seed, {p.prompt for p in pool})
    return Scenario("unreliable-rewards", pool, validation, test)


def imbalance(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256, target: str = "sub",
              target_share: float = 0.1, others: tuple[str, ...] = ("add", "sum3"), seed: int = 0) -> Scenario:
    """The target task is a small share of the pool; validation and test are the target task only."""
    families = {target: target_share, **{f: (1 - target_share) / len(others) for f in others}}
    pool = generate_mix(families, pool_size, seed, "pool")
    validation, test = _held_out({target: 1.0}, validation_size, test_size, seed, {p.prompt for p in pool})
    return Scenario("imbalance", pool, validation, test)


def low_utility(pool_size: int = 2000, validation_size: int = 64, test_size: int = 256, useful_share: float = 0.2,
                useful: tuple[str, ...] = ("add", "sub"), seed: int = 0) -> Scenario:
    """Most of the pool is trivial (`a+0=`) or unsolvable (3-digit products); a minority is useful."""
    n_useful = int(round(useful_share * pool_size))
    pool = generate_mix({f: 1.0 for f in useful}, n_useful, seed, "pool")
    n_trivial = min(10, (pool_size - n_useful) // 2)  # the trivial family has only ~10 distinct prompts
    trivial = generate("trivial", n_trivial, seed, "pool-trivial", split=None)
    pool += trivial + generate("hard", pool_size - len(pool) - len(trivial), seed, "pool-hard")
    random.Random(seed).shuffle(pool)
    validation, test = _held_out({f: 1.0 for f in useful}, validation_size, test_size, seed, {p.prompt for p in pool})
    return Scenario("low-utility", pool, validation, test)


SCENARIOS = {"unreliable-rewards": unreliable_rewards, "imbalance": imbalance, "low-utility": low_utility}


def build_scenario(name: str, **kw) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario '{name}' (choose from: {', '.join(SCENARIOS)})")
    return SCENARIOS[name](**kw)
