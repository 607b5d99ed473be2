"""Problems for chat models: single-digit arithmetic, and easy tasks generated offline by `reasoning-gym`.

Every prompt is a one-message chat (``[{"role": "user", "content": ...}]``), rendered with the model's chat
template, and every problem names its verifier in ``metadata["verifier"]`` (for the "task" verifier):
"math" (math-verify) for arithmetic, because a chat model answers "3 + 4 = 7" or "The answer is 7." rather than
the bare number (measured on SmolLM2-135M-Instruct: exact match scored 0 of 64); "countdown" for countdown
(with ``metadata["numbers"]`` and ``metadata["target"]``). The arithmetic questions still ask for the number only.

reasoning-gym is imported only when one of its tasks is asked for, so the rest of the package works without it.
"""

from __future__ import annotations

import random
from typing import Any, Collection

from .problem import Problem, Prompt

REASONING_GYM_INSTALL = "pip install reasoning-gym==0.1.25"
ANSWER_ONLY = "Answer with the number only."

# Easy settings for a ~100M-parameter chat model: one-digit operands, two or three terms; no division in
# basic_arithmetic (reasoning-gym floors it, which its "Calculate 7 / 2." prompt does not say).
EASY_CONFIGS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=1, operators=("+", "-", "*"),
                             allow_negation=False),
    "chain_sum": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=1),
    "countdown": dict(min_numbers=2, max_numbers=3, min_value=1, max_value=9, min_target=1, max_target=50),
}
REASONING_GYM_TASKS = tuple(EASY_CONFIGS)
SINGLE_DIGIT_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
SINGLE_DIGIT_COUNT = 10 * 10 * len(SINGLE_DIGIT_OPS)  # every distinct single-digit problem


def require_reasoning_gym(what: str):
    """The reasoning_gym module; a one-line ValueError naming `what` needs it when it is not installed."""
    try:
        import reasoning_gym
    except ImportError:
        raise ValueError(f"{what} needs reasoning-gym: {REASONING_GYM_INSTALL}") from None
    return reasoning_gym


def prompt_text(prompt: Prompt) -> str:
    """A hashable key for a prompt: the text itself, or the chat messages' contents joined."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def reasoning_gym_problems(task: str, n: int, seed: int, *, exclude: Collection[str] = (),
                           id_prefix: str | None = None, **task_config) -> list[Problem]:
    """`n` distinct problems of a reasoning-gym task (basic_arithmetic, chain_sum or countdown).

    `task_config` overrides `EASY_CONFIGS[task]` (reasoning-gym's config dataclass fields). Prompts whose
    `prompt_text` is in `exclude` are skipped. reasoning-gym seeds item i with ``seed + i``, so seeds s and s+1
    give nearly the same problems shifted by one: use well-separated seeds for different sets. Each problem's
    ``metadata["rg_seed"]`` and ``["rg_index"]`` regenerate its reasoning-gym entry (same config).
    """
    if task not in EASY_CONFIGS:
        raise ValueError(f"unknown reasoning-gym task '{task}' (choose from: {', '.join(REASONING_GYM_TASKS)})")
    reasoning_gym = require_reasoning_gym(f"task '{task}'")
    max_items = 20 * n + 100  # bounded: a narrow config may not have n distinct prompts
    dataset = reasoning_gym.create_dataset(task, seed=seed, size=max_items, **{**EASY_CONFIGS[task], **task_config})
    seen = set(exclude)
    problems: list[Problem] = []
    for index in range(max_items):
        if len(problems) == n:
            break
        problem = _from_item(task, dataset[index], f"{id_prefix or task}-{len(problems)}", seed, index)
        key = prompt_text(problem.prompt)
        if key not in seen:
            seen.add(key)
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"reasoning-gym task '{task}' gave only {len(problems)} distinct new prompts of {n} asked; "
                         f"ask for fewer or widen its config")
    return problems


def _from_item(task: str, item: dict[str, Any], problem_id: str, seed: int, index: int) -> Problem:
    """A reasoning-gym entry as a Problem with what our verifiers need in its metadata."""
    # math-verify, not exact match: a chat model answers "3 + 4 = 7" or "The answer is 7." (measured on SmolLM2)
    metadata: dict[str, Any] = {"verifier": "math", "rg_seed": seed, "rg_index": index}
    question = f"{item['question']}\n{ANSWER_ONLY}"
    if task == "countdown":  # its question already spells out the answer format
        question = item["question"]
        metadata.update(verifier="countdown", numbers=list(item["metadata"]["numbers"]),
                        target=int(item["metadata"]["target"]))
    return Problem(id=problem_id, prompt=chat(question), answer=str(item["answer"]), source=task, metadata=metadata)


def single_digit_arithmetic(n: int, seed: int, *, exclude: Collection[str] = (),
                            id_prefix: str | None = None) -> list[Problem]:
    """`n` distinct problems ``a + b``, ``a - b`` or ``a * b`` with a, b in 0..9, in seeded order.

    Prompts whose `prompt_text` is in `exclude` are skipped; fewer than `n` left is an error.
    """
    triples = [(a, op, b) for a in range(10) for op in SINGLE_DIGIT_OPS for b in range(10)]
    random.Random(f"single-digit:{seed}").shuffle(triples)
    problems: list[Problem] = []
    for a, op, b in triples:
        if len(problems) == n:
            break
        prompt = chat(f"What is {a} {op} {b}? {ANSWER_ONLY}")
        if prompt_text(prompt) in exclude:
            continue
        problems.append(Problem(id=f"{id_prefix or 'single_digit'}-{len(problems)}", prompt=prompt,
                                answer=str(SINGLE_DIGIT_OPS[op](a, b)), source="single_digit",
                                metadata={"verifier": "math"}))
    if len(problems) < n:
        raise ValueError(f"single-digit arithmetic has only {len(problems)} new problems of {n} asked "
                         f"({SINGLE_DIGIT_COUNT} exist in all)")
    return problems
