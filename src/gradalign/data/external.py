"""Problems from outside the package: `datasets` datasets (hub ids, ``save_to_disk`` directories), and for chat
models, single-digit arithmetic and easy tasks generated offline by `reasoning-gym`.

Datasets: `load_dataset_rows` only reads rows; `gradalign.data.io.load_problems` validates them as it does a
file's. `datasets` is imported only when a dataset is asked for.

Every prompt is a one-message chat (``[{"role": "user", "content": ...}]``), rendered with the model's chat
template, and every problem names its verifier in ``metadata["verifier"]`` (for the "task" verifier):
"number" (math-verify, the answer a number) for arithmetic, because a chat model answers "3 + 4 = 7" or "The answer
is 7." rather than the bare number (measured on SmolLM2-135M-Instruct: exact match scored 0 of 64), and because
math-verify alone evaluates expressions: the question's own "3 + 4" copied back would count as solved; "math" for
word problems; "countdown" for countdown (with ``metadata["numbers"]`` and ``metadata["target"]``). The arithmetic
questions still ask for the number only.

reasoning-gym is imported only when one of its tasks is asked for, so the rest of the package works without it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, NamedTuple

from .problem import DataError, Problem, Prompt, one_line

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


# ------------------------------------------------------------------------------------------------ datasets

# Files `save_to_disk` writes (datasets.config's DATASET_STATE_JSON_FILENAME, DATASETDICT_JSON_FILENAME): such a
# directory needs `load_from_disk`, which `load_dataset` does not fall back to.
_SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")
_MAX_REASON_CHARS = 300  # of a library's error in our one-line message: enough to say why, short enough to read


class DatasetRows(NamedTuple):
    """A dataset's rows, with the name messages give it (``id[config/split]``) and the prefix of default ids."""

    name: str
    id_prefix: str
    rows: Iterable[dict[str, Any]]


def load_dataset_rows(source: str, *, split: str, config: str | None = None) -> DatasetRows:
    """The rows of a `datasets` dataset: a directory made by ``save_to_disk`` (through ``load_from_disk``, taking
    `split` from a DatasetDict; a single Dataset is used whole), or anything ``load_dataset(source, name=config,
    split=split)`` reads (a hub id; a local data directory). Raises a one-line `DataError` naming the dataset when
    it cannot be loaded or has no such split."""
    if is_saved_dataset(source):
        return _rows_from_disk(source, split)
    return _rows_from_load_dataset(source, split, config)


def is_saved_dataset(path: str) -> bool:
    """Whether `path` is a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return Path(path).is_dir() and any((Path(path) / name).is_file() for name in _SAVED_DATASET_FILES)


def _rows_from_disk(path: str, split: str) -> DatasetRows:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as e:  # a damaged directory: datasets and pyarrow raise many types
        raise DataError(f"{path}: the saved dataset could not be loaded ({_reason(e)})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        return DatasetRows(path, Path(path).name, loaded)
    name = f"{path}[{split}]"
    if split not in loaded:
        raise DataError(f"{name}: no split '{split}' (available splits: {', '.join(loaded)})")
    return DatasetRows(name, f"{Path(path).name}-{split}", loaded[split])


def _rows_from_load_dataset(source: str, split: str, config: str | None) -> DatasetRows:
    import datasets

    name = f"{source}[{config}/{split}]" if config else f"{source}[{split}]"
    try:
        dataset = datasets.load_dataset(source, name=config, split=split)
    except Exception as e:  # offline, not found, unknown config or split, unreadable files: many types
        # A name that is no path either is most often a mistyped file path: say so.
        hint = "" if Path(source).exists() else "; it is not a local file or directory either"
        raise DataError(f"{name}: the dataset could not be loaded ({_reason(e)}){hint}") from None
    return DatasetRows(name, f"{Path(source).name}-{split}", dataset)


def _reason(error: Exception) -> str:
    """A library's error as one short line."""
    text = one_line(error) or type(error).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS - 3] + "..."


# ------------------------------------------------------------------------------------------ reasoning-gym


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
    problems = first_distinct(
        lambda index, count: _from_item(task, dataset[index], f"{id_prefix or task}-{count}", seed, index),
        max_items, n, exclude)
    if len(problems) < n:
        raise ValueError(f"reasoning-gym task '{task}' gave only {len(problems)} distinct new prompts of {n} asked; "
                         f"ask for fewer or widen its config")
    return problems


def first_distinct(make: Callable[[int, int], Problem], max_items: int, n: int, exclude: Collection[str]
                   ) -> list[Problem]:
    """Up to `n` problems `make(index, count)` for index 0, 1, ..., `max_items` - 1 (count: how many were kept
    before it), skipping those whose `prompt_text` is in `exclude` or already kept."""
    seen = set(exclude)
    problems: list[Problem] = []
    for index in range(max_items):
        if len(problems) == n:
            break
        problem = make(index, len(problems))
        key = prompt_text(problem.prompt)
        if key not in seen:
            seen.add(key)
            problems.append(problem)
    return problems


def _from_item(task: str, item: dict[str, Any], problem_id: str, seed: int, index: int) -> Problem:
    """A reasoning-gym entry as a Problem with what our verifiers need in its metadata."""
    # math-verify, not exact match: a chat model answers "3 + 4 = 7" or "The answer is 7." (measured on SmolLM2);
    # a number, not the question's expression copied back ("number")
    metadata: dict[str, Any] = {"verifier": "number", "rg_seed": seed, "rg_index": index}
    question = f"{item['question']}\n{ANSWER_ONLY}"
    if task == "countdown":  # its question already spells out the answer format
        question = item["question"]
        metadata.update(verifier="countdown", numbers=list(item["metadata"]["numbers"]),
                        target=int(item["metadata"]["target"]))
    return Problem(id=problem_id, prompt=chat(question), answer=str(item["answer"]), source=task, metadata=metadata)


def gsm_symbolic_problems(n: int, seed: int, *, exclude: Collection[str] = (),
                          id_prefix: str | None = None) -> list[Problem]:
    """`n` distinct GSM8K-style word problems from reasoning-gym's gsm_symbolic (templates of GSM8K test
    problems with fresh names and numbers), judged by math-verify. The question already asks for the bare final
    answer; ``metadata["template"]`` is the GSM8K template it instantiates."""
    reasoning_gym = require_reasoning_gym("task 'gsm_symbolic'")
    max_items = 2 * n + 100  # templates are wide: duplicates are rare
    dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=max_items)

    def word_problem(index: int, count: int) -> Problem:
        item = dataset[index]
        return Problem(id=f"{id_prefix or 'gsm_symbolic'}-{count}", prompt=chat(item["question"]),
                       answer=str(item["answer"]), source="gsm_symbolic",
                       metadata={"verifier": "math", "template": int(dataset.task_indices[index]), "rg_seed": seed,
                                 "rg_index": index})

    problems = first_distinct(word_problem, max_items, n, exclude)
    if len(problems) < n:
        raise ValueError(f"gsm_symbolic gave only {len(problems)} distinct new prompts of {n} asked")
    return problems


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
                                metadata={"verifier": "number"}))
    if len(problems) < n:
        raise ValueError(f"single-digit arithmetic has only {len(problems)} new problems of {n} asked "
                         f"({SINGLE_DIGIT_COUNT} exist in all)")
    return problems
