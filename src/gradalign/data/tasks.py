"""Seeded synthetic arithmetic task families in a terse format (`37+45=` -> `82`), verified by exact match."""

from __future__ import annotations

import hashlib
import random
from typing import Callable

from .problem import Problem


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{a}+{b}=", str(a + b)


def _sub(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    a, b = max(a, b), min(a, b)  # non-negative results keep the answer alphabet small
    return f"{a}-{b}=", str(a - b)


def _mul(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 9), rng.randint(10, 99)
    return f"{a}*{b}=", str(a * b)


def _sum3(rng: random.Random) -> tuple[str, str]:
    a, b, c = rng.randint(1, 9), rng.randint(10, 99), rng.randint(1, 9)
    return f"{a}+{b}+{c}=", str(a + b + c)


# Annihilators with one operand of up to 3 digits: the answer is always 0, so a policy that has seen the forms
# solves them every time (the tiny warm start does: see policy/warmstart.py). Identities such as `a+0=` were
# tried and dropped: copying a 2-digit operand at temperature 0.7 is not reliable for the tiny policy (54-75%).
_TRIVIAL_FORMS = ("{a}*0=", "0*{a}=", "{a}-{a}=")


def _trivial(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_TRIVIAL_FORMS).format(a=rng.randint(0, 999)), "0"


def _hard(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"{a}*{b}=", str(a * b)


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,  # 2-digit addition
    "sub": _sub,  # 2-digit subtraction
    "mul": _mul,  # 1-digit by 2-digit multiplication
    "sum3": _sum3,  # three operands
    "trivial": _trivial,  # answer 0: solved by the warm-started policy (low utility)
    "hard": _hard,  # 3-digit by 3-digit products: unsolvable for the tiny policy (low utility)
}


SPLITS = ("sft", "rl")


def split_of(prompt: str) -> str:
    """A fixed hash split of the prompt space: 1/4 for warm-start SFT, 3/4 for RL pools and test sets.

    The 2-digit families have only ~12k distinct prompts, so the warm start would otherwise memorise the very
    problems GRPO and the test set use; with the split, its accuracy is generalisation.
    """
    return "sft" if hashlib.blake2b(prompt.encode(), digest_size=2).digest()[0] % 4 == 0 else "rl"


def generate(family: str, n: int, seed: int, id_prefix: str | None = None,
             exclude: set[str] | None = None, split: str | None = "rl") -> list[Problem]:
    """`n` distinct problems of one family from one split of the prompt space (None: any);
    prompts in `exclude` are skipped (to keep pool, validation and test disjoint)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family '{family}' (choose from: {', '.join(FAMILIES)})")
    rng = random.Random(f"{family}:{seed}")
    seen = set(exclude or ())
    out: list[Problem] = []
    for _ in range(200 * n + 1000):  # bounded: small families (trivial) may run out of distinct prompts
        if len(out) == n:
            break
        prompt, answer = FAMILIES[family](rng)
        if prompt in seen or (split is not None and split_of(prompt) != split):
            continue
        seen.add(prompt)
        out.append(Problem(id=f"{id_prefix or family}-{len(out)}", prompt=prompt, answer=answer, source=family))
    return out


def generate_mix(families: dict[str, float], n: int, seed: int, id_prefix: str,
                 exclude: set[str] | None = None, split: str | None = "rl") -> list[Problem]:
    """`n` problems drawn from several families in the given proportions, shuffled with `seed`."""
    total = sum(families.values())
    counts = {f: int(round(n * w / total)) for f, w in families.items()}
    counts[max(families, key=families.get)] += n - sum(counts.values())  # rounding remainder to the largest
    problems: list[Problem] = []
    taken = set(exclude or ())
    for family, count in counts.items():
        batch = generate(family, count, seed, id_prefix=f"{id_prefix}-{family}", exclude=taken, split=split)
        taken.update(p.prompt for p in batch)
        problems.extend(batch)
    random.Random(seed).shuffle(problems)
    return problems
