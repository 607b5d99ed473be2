"""The cost ledger: what a round generated and pushed through forward+backward, per phase.

Machine-independent counts sit beside the round's wall times (`timings`): completions and completion tokens
generated per phase, and tokens (prompt + completion, padding excluded) through a forward+backward for scoring and
for training. `reused` counts the selection completions that training consumed instead of generating its own: they
are counted once, under `candidates`. Test evaluation is a measurement every method pays alike, so it is not a cost
here (its seconds stay in `timings`).

One module owns the ledger's arithmetic: the round loop and the trainers fill a `Ledger`; the reports read the
round records back through `totals`, `selection_per_training` and `cumulative`. Only plain numbers: reports import
it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

# completions generated only to choose problems (a reused one is subtracted: training consumed it)
SELECTION_PHASES = ("candidates", "validation", "warmup", "offline")
GENERATION_PHASES = (*SELECTION_PHASES, "training")
FORWARD_BACKWARD_PHASES = ("scoring", "warmup", "training")
# wall-time keys of a round's `timings` that are cost (evaluation is not): the time axis of time to accuracy
COST_SECONDS = ("rollouts", "validation_rollouts", "offline_rollouts", "warmup", "scoring", "selection", "training")


def _counts() -> dict[str, int]:
    return {"completions": 0, "tokens": 0}


@dataclass
class Ledger:
    """Counts of one round (or of one trainer, added into a round's)."""

    generated: dict[str, dict[str, int]] = field(
        default_factory=lambda: {phase: _counts() for phase in GENERATION_PHASES})
    reused: dict[str, int] = field(default_factory=_counts)
    forward_backward: dict[str, int] = field(default_factory=lambda: {p: 0 for p in FORWARD_BACKWARD_PHASES})

    @classmethod
    def from_dict(cls, cost: dict) -> "Ledger":
        """The ledger a record's `cost` (`to_dict`) holds; missing parts count 0."""
        ledger = cls()
        for phase, c in cost.get("generated", {}).items():
            ledger.generate(phase, c.get("completions", 0), c.get("tokens", 0))
        for phase, tokens in cost.get("forward_backward_tokens", {}).items():
            ledger.pass_through(phase, tokens)
        reused = cost.get("reused", {})
        ledger.reuse(reused.get("completions", 0), reused.get("tokens", 0))
        return ledger

    def generate(self, phase: str, completions: int, tokens: int) -> None:
        counts = self.generated.setdefault(phase, _counts())
        counts["completions"] += int(completions)
        counts["tokens"] += int(tokens)

    def reuse(self, completions: int, tokens: int) -> None:
        self.reused["completions"] += int(completions)
        self.reused["tokens"] += int(tokens)

    def pass_through(self, phase: str, tokens: int) -> None:
        """`tokens` went through one forward+backward in `phase`."""
        self.forward_backward[phase] = self.forward_backward.get(phase, 0) + int(tokens)

    def add(self, other: "Ledger", as_phase: str | None = None) -> None:
        """Add `other`'s counts; `as_phase` books all of its generation and passes under one phase (a LearnAlign
        warm-up is a training run whose cost is selection's)."""
        for phase, c in other.generated.items():
            self.generate(as_phase or phase, c["completions"], c["tokens"])
        for phase, tokens in other.forward_backward.items():
            self.pass_through(as_phase or phase, tokens)
        self.reuse(other.reused["completions"], other.reused["tokens"])

    def to_dict(self) -> dict:
        return {"generated": {p: dict(c) for p, c in self.generated.items()}, "reused": dict(self.reused),
                "forward_backward_tokens": dict(self.forward_backward)}


# ── read back from round records ──────────────────────────────────────────────────────────────────────────────
def totals(rounds: Iterable[dict]) -> dict:
    """The rounds' ledgers added up, with the derived figures every report shows (None without any ledger:
    records written before it existed)."""
    costs = [rec["cost"] for rec in rounds if isinstance(rec.get("cost"), dict)]
    if not costs:
        return None
    total = Ledger()
    for cost in costs:
        total.add(Ledger.from_dict(cost))
    out = total.to_dict()
    out.update(selection_completions=selection_only(total.generated, total.reused, "completions"),
               selection_tokens=selection_only(total.generated, total.reused, "tokens"),
               trained_completions=trained(total.generated, total.reused, "completions"),
               generated_tokens=sum(c["tokens"] for c in total.generated.values()),
               generated_completions=sum(c["completions"] for c in total.generated.values()),
               forward_backward=sum(total.forward_backward.values()))
    out["selection_per_training"] = ratio(out["selection_completions"], out["trained_completions"])
    return out


def selection_only(generated: dict, reused: dict, unit: str) -> int:
    """What was generated only to choose problems: the selection phases, less what training reused."""
    return sum(generated.get(p, _counts())[unit] for p in SELECTION_PHASES) - reused[unit]


def trained(generated: dict, reused: dict, unit: str) -> int:
    """Completions (or tokens) training consumed: its own generations plus the reused selection ones."""
    return generated.get("training", _counts())[unit] + reused[unit]


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def selection_per_training(rounds: Iterable[dict]) -> float | None:
    """Selection generations per training generation: completions sampled only for selection (candidates,
    validation, warm-up, offline, less those training reused) per completion training consumed."""
    t = totals(rounds)
    return t["selection_per_training"] if t else None


def round_cost_seconds(rec: dict) -> float:
    """A round's wall time spent on selection and training (evaluation excluded)."""
    timings = rec.get("timings") or {}
    return float(sum(timings.get(k) or 0.0 for k in COST_SECONDS))


def round_generated_tokens(rec: dict) -> int | None:
    """Tokens a round generated for selection and training (None for a record without a ledger)."""
    cost = rec.get("cost")
    if not isinstance(cost, dict):
        return None
    return int(sum(c.get("tokens", 0) for c in cost.get("generated", {}).values()))


def cumulative(rounds: list[dict]) -> dict[str, list]:
    """Cumulative cost seconds and generated tokens (selection included, evaluation excluded) after each round,
    starting at the untrained policy (0 cost): len(rounds) + 1 values each."""
    seconds, tokens = [0.0], [0]
    for rec in rounds:
        seconds.append(seconds[-1] + round_cost_seconds(rec))
        t = round_generated_tokens(rec)
        tokens.append(None if t is None or tokens[-1] is None else tokens[-1] + t)
    return {"seconds": seconds, "tokens": tokens}
