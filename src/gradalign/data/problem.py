"""The `Problem` record: one verifiable training problem, the unit everything else selects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A prompt is either plain text (completion-style models, the built-in tiny policy) or a chat:
# a list of {"role": ..., "content": ...} messages (instruct models; rendered with the tokenizer's chat template).
Prompt = str | list[dict[str, str]]


@dataclass
class Problem:
    """A problem with a verifiable answer.

    Attributes:
        id: unique, stable identifier (kept through selection, rollouts and reports).
        prompt: text or chat messages shown to the policy.
        answer: the ground truth the verifier checks completions against.
        source: the task family or data source (used for per-source breakdowns and regimes).
        metadata: anything else; the regime builders store e.g. ``{"corrupted": True}`` here.
    """

    id: str
    prompt: Prompt
    answer: str
    source: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def corrupted(self) -> bool:
        """True when the regime builder corrupted this problem's reward (the selection methods never see this)."""
        return bool(self.metadata.get("corrupted", False))


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row and field."""


def one_line(text) -> str:
    """Error messages must stay on one line, even when they quote a library's multi-line message."""
    return " ".join(str(text).split())
