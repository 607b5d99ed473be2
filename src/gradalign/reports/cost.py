"""The cost of one run, read from its round records: the ledger figures every report shows (`curriculum.ledger`
owns the arithmetic, this module picks what a reader compares) and the cumulative cost curve that time to
accuracy is read on, with its two readings: the cost at which the accuracy reaches a target for good, and the
accuracy at a given cost.

Records written before the ledger existed have no `cost`: their figures and token curves are None (a dash)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..curriculum import ledger

# the cost axes of time to accuracy (keys of `ledger.cumulative`) and how a sentence names them
AXES = {"seconds": "wall time", "tokens": "generated tokens"}
THRESHOLD_TOLERANCE = 1e-9  # a seed that ends exactly at the mean of equal finals must count as reaching it


def run_cost(rounds: Sequence[dict]) -> dict | None:
    """The ledger summed over a run's rounds, as reports show it (None without any ledger):
    completions generated only to choose problems (`selection_completions`), consumed by training, reused
    selection completions included (`training_completions`), the reused ones, their ratio; generated tokens split
    the same way (selection + training = all generated); tokens through a forward+backward for selection (scoring
    and LearnAlign's warm-up, as the wall-time split groups them) and for training."""
    total = ledger.totals(rounds)
    if total is None:
        return None
    passes = total["forward_backward_tokens"]
    return {
        "selection_completions": total["selection_completions"],
        "training_completions": total["trained_completions"],
        "reused_completions": total["reused"]["completions"],
        "selection_per_training": total["selection_per_training"],
        "selection_tokens": total["selection_tokens"],
        "training_tokens": ledger.trained(total["generated"], total["reused"], "tokens"),
        "generated_tokens": total["generated_tokens"],
        "fb_selection": passes.get("scoring", 0) + passes.get("warmup", 0),
        "fb_training": passes.get("training", 0),
    }


def cost_curve(rounds: Sequence[dict], axis: str) -> list[float] | None:
    """Cumulative cost on `axis` (AXES) at the untrained policy (0) and after each round, aligned with
    `RunView.curve()`; None when a round has no ledger to count tokens from."""
    values = ledger.cumulative(list(rounds))[axis]
    return None if any(v is None for v in values) else [float(v) for v in values]


def reaches(acc: float | None, target: float) -> bool:
    """Accuracy `acc` is at or above `target`; ties count, with a tolerance so that float noise in a mean does not
    decide them (NaN, a run without a test set, never reaches)."""
    return acc is not None and not math.isnan(acc) and acc >= target - THRESHOLD_TOLERANCE


def lasting_crossing(accs: Sequence[float], target: float) -> int | None:
    """The index of the first round after which the accuracy stays at or above `target` to the end (index 0, the
    untrained policy, never counts); None when the last round is below it. Per-round test accuracy is noisy: a
    curve that touches the target and falls back has not reached it."""
    first = None
    for i in range(len(accs) - 1, 0, -1):
        if not reaches(accs[i], target):
            break
        first = i
    return first


def accuracy_at_cost(costs: Sequence[float], accs: Sequence[float], budget: float) -> float:
    """The accuracy at cumulative cost `budget`, interpolated linearly between rounds; a run that ended cheaper
    than `budget` keeps its final accuracy."""
    if budget >= costs[-1]:
        return float(accs[-1])
    return float(np.interp(budget, costs, accs))
