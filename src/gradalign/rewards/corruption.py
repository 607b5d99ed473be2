"""The problem-level reward, used both for training and for selection: a verifier, unless the regime
builder corrupted the problem (``metadata["corrupted"]``), in which case the reward is noise.

Corruption kinds (``metadata["corruption"]``):

* ``"coin"`` (default): a fair coin per rollout, whatever the completion says. It is a fixed function of
  (seed, problem, completion, occurrence of that completion in the batch), so it is reproducible (a resumed
  run sees the same rewards) while repeated identical completions still get independent coins: a corrupted
  problem's pass rate is Binomial(k, 1/2)/k, near 0.5, exactly what pass-rate heuristics prefer.
* ``"wrong-answer"``: the verifier against ``metadata["wrong_answer"]`` instead of the true answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from gradalign.rewards.base import DEFAULT_MAX_CHARS, Verifier, cap_completions, check_lengths

CORRUPTION_KINDS = ("coin", "wrong-answer")


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
        for i, (completion, answer, metadata) in enumerate(zip(completions, answers, metadatas)):
            metadata = metadata or {}
            if not metadata.get("corrupted", False):
                to_verify.append(i)
                targets.append(answer)
                continue
            kind = metadata.get("corruption", "coin")
            if kind == "coin":
                key = (str(metadata.get("problem_id", answer)), completion)
                occurrences[key] = occurrences.get(key, -1) + 1
                rewards[i] = self._coin(*key, occurrences[key])
            elif kind == "wrong-answer":
                if "wrong_answer" not in metadata:
                    raise ValueError("corruption 'wrong-answer' needs metadata['wrong_answer']")
                to_verify.append(i)
                targets.append(str(metadata["wrong_answer"]))
            else:
                raise ValueError(f"unknown corruption {kind!r} (choose from: {', '.join(CORRUPTION_KINDS)})")
        if to_verify:
            # per-problem metadata goes along: task-aware verifiers (countdown, `task`) read their puzzle from it
            verified = self.verifier.batch(cap_completions([completions[i] for i in to_verify], self.max_chars),
                                           targets, [metadatas[i] for i in to_verify])
            for i, reward in zip(to_verify, verified):
                rewards[i] = reward
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

    def _coin(self, key: str, completion: str, occurrence: int) -> float:
        # JSON-encoding keeps field boundaries unambiguous ("a"+"bc" != "ab"+"c");
        # blake2b, unlike hash(), is the same in every process and run.
        digest = hashlib.blake2b(json.dumps([self.seed, key, completion, occurrence]).encode(), digest_size=8).digest()
        return float(digest[0] & 1)
