"""What every verifier shares: the `Verifier` protocol, the length check, the completion cap and the end-of-text
markers. `verifiers` and `expression` both build on it (and nothing here imports either).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

Metadata = Mapping[str, Any] | None


@runtime_checkable
class Verifier(Protocol):
    """Anything with a `name` that scores (completion, answer) pairs.

    Subclass it to inherit the default `batch` (a loop); override `batch` when scoring many pairs at
    once is cheaper (as `MathVerify` does, to pay one process round trip per batch). `batch` also takes
    each problem's metadata: verifiers that need more than the answer (countdown's numbers and target,
    `TaskVerifier`'s choice of verifier) read it; the others ignore it.

    Optionally, `answer_keys(completions, answers, metadatas) -> list[str | None]`: what the reward reads of each
    completion (the extracted answer, math-verify's parse), such that two completions of one problem with the same
    key always get the same reward (None: not known). Selection uses it to prove a group's rewards noise: one
    answer rewarded two ways (`Rollouts.inconsistent_rewards`). Verifiers without it are checked on identical
    completions only.
    """

    name: str

    def __call__(self, completion: str, answer: str) -> float: ...

    def batch(self, completions: list[str], answers: list[str], metadatas: list[Metadata] | None = None) -> list[float]:
        check_lengths(completions, answers, metadatas)
        return [self(c, a) for c, a in zip(completions, answers)]


def check_lengths(completions: list[str], answers: list[str], metadatas: list[Metadata] | None = None) -> list[Metadata]:
    """The metadatas, one per completion (all None when not given); raise ValueError if the lengths differ."""
    if metadatas is None:
        metadatas = [None] * len(completions)
    if not len(completions) == len(answers) == len(metadatas):
        raise ValueError(f"lengths differ: {len(completions)} completions, {len(answers)} answers, "
                         f"{len(metadatas)} metadatas")
    return metadatas


# How many characters of a completion any verifier parses: `ProblemReward` (through which every run scores)
# cuts longer completions here, then the verifier applies its usual extraction to the rest. RunConfig's
# `verifier_max_chars` sets it; a few thousand characters is far more than a generated answer needs
# (max_completion_length is small) and bounds the parse cost of every verifier.
DEFAULT_MAX_CHARS = 4096


def cap_completions(completions: list[str], max_chars: int | None = DEFAULT_MAX_CHARS) -> list[str]:
    """Each completion cut to its first `max_chars` characters (None: no cap)."""
    if max_chars is None:
        return list(completions)
    return [c[:max_chars] if len(c) > max_chars else c for c in completions]


# End-of-text markers a completion may carry when decoded without skipping special tokens.
DEFAULT_EOS_MARKERS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>")
