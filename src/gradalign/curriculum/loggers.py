"""Step metrics and round records to the loggers `report_to` names (TensorBoard, W&B, ...), through the
integration callbacks transformers' Trainer itself uses, so they land where a TRL user looks for them.

`gradalign run` builds a fresh TRL trainer every round, and each restarts its step count; `RunLoggers` keeps one
step counter for the whole run. `GradAlignGRPOTrainer` logs through TRL's own `log` instead (same tags).
"""

from __future__ import annotations

import math
import numbers

from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks

from .records import round_steps

SKIPPED = {"train_log", "selected_ids", "pass_rate_histogram", "selected_by_source", "selected_by_utility"}


def flatten_scalars(record: dict, prefix: str = "selection") -> dict[str, float]:
    """Every finite number of a (nested) round record as `prefix/key/subkey` (ids, histograms, logs left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in SKIPPED:
            continue
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(flatten_scalars(value, name))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def integrations(report_to: list[str]) -> list[str]:
    return [name for name in report_to if name != "none"]


class RunLoggers:
    """The `report_to` integrations of one run, fed with our own step numbers."""

    def __init__(self, report_to: str | list[str] | None, output_dir: str, model=None):
        # TrainingArguments reads report_to as TRL does ("none", "all", a name or a list); logs: output_dir/runs/...
        self.args = TrainingArguments(output_dir=str(output_dir), report_to=report_to or "none")
        names = integrations(self.args.report_to)
        self.state, self.control = TrainerState(), TrainerControl()
        self.callbacks = [cls() for cls in get_reporting_integration_callbacks(names)]
        for callback in self.callbacks:
            callback.on_train_begin(self.args, self.state, self.control, model=model)

    def log(self, step: int, logs: dict[str, float]) -> None:
        self.state.global_step = step
        for callback in self.callbacks:
            callback.on_log(self.args, self.state, self.control, logs=logs)

    def log_round(self, record: dict, steps_before: int) -> None:
        """A round's TRL step logs at steps steps_before + 1, ..., then its selection record at the round's step."""
        for step, row in round_steps(record, steps_before):
            self.log(step, {k: float(v) for k, v in row.items()
                            if isinstance(v, numbers.Real) and k not in ("step", "epoch")})
        self.log(record["step"], flatten_scalars(record))

    def close(self) -> None:
        for callback in self.callbacks:
            callback.on_train_end(self.args, self.state, self.control)
