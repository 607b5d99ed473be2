"""The round record: what one round of a run leaves in `rounds.jsonl` (and its steps in `metrics.jsonl`).

One module owns the schema: `round_record` builds a record, `write_round_logs` writes the two files, and the
reports read them back through `read_rounds`, `is_number` and `time_split`. Only numpy: reports import it
without loading a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .. import fileio
from ..data.problem import Problem, one_line
from ..provenance import running_code

ROUNDS_FILE = "rounds.jsonl"  # one record per finished round, without the per-step log
METRICS_FILE = "metrics.jsonl"  # TRL's step logs under one step count, and each round's test accuracy
TRAIN_KEYS = ("loss", "reward", "reward_std", "frac_reward_zero_std")  # TRL step logs averaged into "train"
# How a round's timings add up into the reported wall-time split (one place for every report).
TIME_GROUPS: dict[str, tuple[str, ...]] = {
    "rollouts": ("rollouts", "validation_rollouts", "offline_rollouts"),  # CROPI's offline stores: in round 0
    "scoring": ("scoring", "selection", "warmup"),  # selection cost beyond rollouts, LearnAlign's warm-up included
    "training": ("training",),
    "evaluation": ("evaluation",),
    "total": ("total",),
}


# ── build ────────────────────────────────────────────────────────────────────────────────────────────────────
def round_record(*, r: int, step: int, method: str, processes: int, chunk_index: int | None,
                 chunk: list[Problem], chosen: list[Problem], pool: list[Problem], train_log: list[dict],
                 test: dict) -> dict:
    """The record of round `r` without its selection (`add_selection` adds that): what was chosen from the chunk,
    what training logged and what the test measured. Shares of labels the pool does not carry are None."""
    return {
        "round": r, "step": step, "method": method, "chunk": chunk_index, "processes": processes,
        "candidates": len(chunk), "selected_count": len(chosen), "selected_ids": [p.id for p in chosen],
        "selected_by_source": count_values(p.source for p in chosen),
        "selected_corrupted_share": (float(np.mean([p.corrupted for p in chosen]))
                                     if any(p.corrupted for p in pool) else None),
        "selected_by_utility": (count_values(p.metadata.get("utility") for p in chosen)
                                if any("utility" in p.metadata for p in pool) else None),
        "train": {k: float(np.mean([float(row[k]) for row in train_log if k in row])) for k in TRAIN_KEYS
                  if train_log},
        "train_log": train_log, "test": test, "timings": {}, "code": running_code(),
    }


def add_selection(record: dict, sel, diagnostics: dict) -> None:
    """The selection's part of a record (`sel`: a `round.RoundSelection`): candidates' pass rates, scores,
    validation, fallback, the method's extras, timings and the label-based diagnostics."""
    cand, chosen = sel.candidates, sel.selected
    record.update({
        "pass_rate": summary_stats(cand.pass_rate), "zero_variance": int(cand.zero_variance.sum()),
        "inconsistent": None if cand.inconsistent is None else int(cand.inconsistent.sum()),
        "pass_rate_histogram": np.histogram(cand.pass_rate, bins=10, range=(0, 1))[0].tolist(),
        "selected_pass_rate": summary_stats(cand.pass_rate[chosen]),
        "scores": {"all": summary_stats(sel.scores), "selected": summary_stats(sel.scores[chosen])},
        "validation": {"zero_variance": sel.validation_zero_variance, "pass_rate": sel.validation_pass_rate},
        "fallback": sel.fallback, "scored": sel.scored,  # False: the gradient-free checks decided
    })
    for key in ("warmup", "validation_sets", "offpolicy"):
        if getattr(sel, key) is not None:
            record[key] = getattr(sel, key)
    record["timings"].update(sel.timings)
    record["diagnostics"] = diagnostics


def summary_stats(x) -> dict:
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return {}
    return {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()), "std": float(x.std())}


def count_values(values: Iterable[Any]) -> dict[str, int]:
    """How often each value occurs (as text), e.g. the sources of a selection."""
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


# ── write ────────────────────────────────────────────────────────────────────────────────────────────────────
def round_steps(record: dict, steps_before: int) -> Iterable[tuple[int, dict]]:
    """(the run's step, TRL's row) for each GRPO step a round logged: TRL's own "step" restarts with every
    round's trainer, so a round's steps follow the previous round's last step, `steps_before`."""
    for i, row in enumerate(record.get("train_log", [])):
        yield steps_before + i + 1, row


def run_steps(records: list[dict]) -> Iterable[tuple[dict, int, dict]]:
    """(record, the run's step, TRL's row) for every GRPO step the rounds logged."""
    steps_before = 0
    for rec in records:
        for step, row in round_steps(rec, steps_before):
            yield rec, step, row
        steps_before = rec["step"]


def write_round_logs(out: Path, records: list[dict]) -> None:
    """rounds.jsonl (one line per round, without the per-step log) and metrics.jsonl (per step and round)."""
    fileio.write_jsonl(out / ROUNDS_FILE, [{k: v for k, v in rec.items() if k != "train_log"} for rec in records])
    steps: dict[int, list[dict]] = {}
    for rec, step, row in run_steps(records):
        steps.setdefault(rec["round"], []).append(
            {"round": rec["round"], **{k: float(v) for k, v in row.items() if is_number(v)}, "step": step})
    metrics = []
    for rec in records:
        metrics += steps.get(rec["round"], [])
        metrics.append({"round": rec["round"], "step": rec["step"], "test_accuracy": rec["test"]["accuracy"]})
    fileio.write_jsonl(out / METRICS_FILE, metrics)


# ── read ─────────────────────────────────────────────────────────────────────────────────────────────────────
def has_rounds(run_dir: Path) -> bool:
    path = Path(run_dir) / ROUNDS_FILE
    return path.is_file() and bool(path.read_text().strip())


def read_rounds(path: Path) -> list[dict]:
    """The records of a rounds.jsonl; one-line errors name the file and line."""
    if not path.is_file():
        raise ValueError(f"{path}: missing (not a run directory?)")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({one_line(e)})") from None
    rounds = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {i} is not a JSON object")
        test = row.get("test")
        if not is_number(row.get("step")) or not isinstance(test, dict) or not is_number(test.get("accuracy")):
            raise ValueError(f"{path}: line {i} lacks 'step' or 'test.accuracy' (not a round record?)")
        rounds.append(row)
    return rounds


def is_number(v: Any) -> bool:
    """A finite number, or NaN: the accuracy of a run without a test set."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (math.isfinite(v) or math.isnan(v))


def time_split(rounds: list[dict]) -> dict[str, float | None]:
    """Wall time summed over rounds per group of TIME_GROUPS (None where no round timed it)."""
    return {name: _timing_total(list(rounds), keys) for name, keys in TIME_GROUPS.items()}


def _timing_total(rounds: list[dict], keys: tuple[str, ...]) -> float | None:
    """Sum of the given timing keys over rounds; None when no round recorded any of them."""
    values = [float(r["timings"][k]) for r in rounds for k in keys
              if isinstance(r.get("timings"), dict) and is_number(r["timings"].get(k))]
    return sum(values) if values else None
