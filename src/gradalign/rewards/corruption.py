"""The problem-level reward, used both for training and for selection: a verifier, unless the regime
builder corrupted the problem (``metadata["corrupted"]``), in which case the reward is noise.

Corruption kinds (``metadata["corruption"]``):

* ``"coin"`` (default): a fair coin per rollout, whatever the completion says. It is a fixed function of
  (seed, problem, completion, occurrence of that completion in the batch), so it is reproducible (a resumed
  run sees the same rewards) while repeated identical completions still get independent coins: a corrupted
  problem's pass rate is Binomial(k, 1/2)/k, near 0.5, exactly what pass-rate heuristics prefer.
* ``"wrong-answer"``: the verifier against ``metadata["wrong_answer"]`` instead of the true answer.
* ``"slips"``: a mostly-right judge: the verifier against the true answer, its reward flipped (1 - r) on a fixed
  pseudo-random `SLIP_RATE` of the completions (keyed as the coin is, so identical completions slip
  independently). Mild noise, where a group's rewards still mostly teach.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from gradalign.rewards.base import DEFAULT_MAX_CHARS, Verifier, cap_completions, check_lengths

CORRUPTION_KINDS = ("coin", "wrong-answer", "slips")
SLIP_RATE = 0.1  # "slips": the share of completions whose reward the judge gets wrong


class ProblemReward:
    """Callable ``(completion, answer, metadata) -> float``; `batch` scores many at once.

    The one place every verifier is called from in a run: completions longer than `max_chars`
    (RunConfig's `verifier_max_chars`; None for no cap) are cut to their first `max_chars` characters
    before the verifier sees them, which then applies its usual extraction to what is left.
    """

    def __init__(self, verifier: Verifier, seed: int = 0, max_chars: int | None = DEFAULT_MAX_CHARS):
        self.verifier = verifier
        self.seed = seed
        self.max_chars = max_chars

    def __call__(self, completion: str, answer: str, metadata: Mapping[str, Any] | None = None) -> float:
        return self.batch([completion], [answer], [metadata])[0]

    def batch(
        self,
        completions: list[str],
        answers: list[str],
        metadatas: list[Mapping[str, Any] | None],
    ) -> list[float]:
        check_lengths(completions, answers, metadatas)
        rewards: list[float | None] = [None] * len(completions)
        # Everything the verifier must check goes through one `verifier.batch` call (one round trip to
        # the math-verify worker instead of one per completion).
        to_verify: list[int] = []
        targets: list[str] = []
        occurrences: dict[tuple[str, str], int] = {}
        slips: set[int] = set()  # "slips": the completions whose verified reward the judge flips
        for i, (completion, answer, metadata) in enumerate(zip(completions, answers, metadatas)):
            metadata = metadata or {}
            kind = metadata.get("corruption", "coin") if metadata.get("corrupted", False) else None
            if kind not in (None, *CORRUPTION_KINDS):
                raise ValueError(f"unknown corruption {kind!r} (choose from: {', '.join(CORRUPTION_KINDS)})")
            if kind in ("coin", "slips"):
                key = (str(metadata.get("problem_id", answer)), completion)
                occurrences[key] = occurrences.get(key, -1) + 1
                digest = self._digest(*key, occurrences[key])
            if kind == "coin":
                rewards[i] = float(digest[0] & 1)
                continue
            if kind == "slips" and int.from_bytes(digest[1:], "big") < SLIP_RATE * 2 ** 56:
                slips.add(i)
            if kind == "wrong-answer" and "wrong_answer" not in metadata:
                raise ValueError("corruption 'wrong-answer' needs metadata['wrong_answer']")
            to_verify.append(i)
            targets.append(str(metadata["wrong_answer"]) if kind == "wrong-answer" else answer)
        if to_verify:
            # per-problem metadata goes along: task-aware verifiers (countdown, `task`) read their puzzle from it
            verified = self.verifier.batch(cap_completions([completions[i] for i in to_verify], self.max_chars),
                                           targets, [metadatas[i] for i in to_verify])
            for i, reward in zip(to_verify, verified):
                rewards[i] = 1.0 - reward if i in slips else reward
        return rewards  # type: ignore[return-value]  (every slot is filled above)

    def answer_keys(self, completions: list[str], answers: list[str], metadatas: list[Mapping[str, Any] | None]
                    ) -> list[str | None]:
        """What the verifier reads of each completion (its `answer_keys`; all None for a verifier without one), cut
        as `batch` cuts them. Corrupted problems get the keys a clean one would: the simulated noisy judge reads the
        same answer and rewards it at random."""
        check_lengths(completions, answers, metadatas)
        keys = getattr(self.verifier, "answer_keys", None)
        if keys is None:
            return [None] * len(completions)
        return keys(cap_completions(completions, self.max_chars), answers, metadatas)

    def _digest(self, key: str, completion: str, occurrence: int) -> bytes:
        """8 fixed bytes per (seed, problem, completion, occurrence): the coin is the first byte's low bit, a slip
        the other seven. JSON-encoding keeps field boundaries unambiguous ("a"+"bc" != "ab"+"c"); blake2b, unlike
        hash(), is the same in every process and run."""
        return hashlib.blake2b(json.dumps([self.seed, key, completion, occurrence]).encode(), digest_size=8).digest()
