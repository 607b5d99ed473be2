"""A regimes benchmark directory, read into a `BenchView` of one `RegimeView` per regime.

`gradalign bench regimes` runs every selection method in each data regime with several seeds; every cell is an
ordinary run directory (`OUT/<regime>/<method>/seed-<s>/`). Reading only those files lets a report cover a
finished benchmark and one still running alike, so each cell has one of three states:
- a cell whose `rounds.jsonl` is missing or empty has not started: it is *pending* and skipped;
- a cell with fewer rounds than its config's `rounds` is *running*: also pending, and left out of the table's
  statistics (finals taken at different steps would not compare), but its rounds so far are in the curves,
  which then stop at the last step every seed reached;
- a cell with all its rounds is *finished*: the table and the verdicts use finished cells only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..curriculum.records import has_rounds, is_number
from .summary import RunView, load_run, read_json_object


def rounds_multiple(arm: str) -> int | None:
    """N for an arm `METHOD@xN` (METHOD run N >= 2 times the benchmark's rounds, e.g. `full@x2`), None for any
    other arm (`@x1` included: it would be METHOD itself)."""
    _, _, variant = arm.partition("@")
    times = int(variant[1:]) if variant[:1] == "x" and variant[1:].isdigit() else 0
    return times if times >= 2 else None


def is_finished(run: RunView) -> bool:
    """All the rounds its config asks for are recorded (a config without `rounds`: any round is the end)."""
    wanted = run.config.get("rounds")
    return len(run.rounds) >= (int(wanted) if is_number(wanted) and wanted > 0 else 1)


@dataclass
class RegimeView:
    """One regime of a benchmark: its started cells, method → seed → run, and the cells not started."""

    name: str
    kind: str  # the regime's type (regime.json "regime"), which picks the share that tells its story
    target_sources: list[str]
    runs: dict[str, dict[int, RunView]]
    not_started: dict[str, list[int]]

    def finished(self, method: str) -> list[RunView]:
        return list(self.finished_by_seed(method).values())

    def finished_by_seed(self, method: str) -> dict[int, RunView]:
        return {seed: run for seed, run in self.runs.get(method, {}).items() if is_finished(run)}

    def running(self, method: str) -> list[int]:
        return [seed for seed, run in self.runs.get(method, {}).items() if not is_finished(run)]

    def started(self, method: str) -> list[RunView]:
        return list(self.runs.get(method, {}).values())


@dataclass
class BenchView:
    """A benchmark directory, read: its settings (bench.json) and one `RegimeView` per regime."""

    path: Path
    preset: str | None
    methods: list[str]
    seeds: list[int]
    config: dict
    regimes: dict[str, RegimeView] = field(default_factory=dict)

    def started_runs(self) -> list[RunView]:
        return [run for reg in self.regimes.values() for seeds in reg.runs.values() for run in seeds.values()]

    def any_run(self) -> RunView | None:
        return next(iter(self.started_runs()), None)


def _names(path: Path, data: dict, key: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{path}: '{key}' must be a non-empty list of names")
    return value


def _read_bench_json(path: Path) -> dict:
    data = read_json_object(path, "the benchmark's settings", missing="not a benchmark directory?")
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ValueError(f"{path}: 'seeds' must be a non-empty list of integers")
    if not isinstance(data.get("config", {}), dict):
        raise ValueError(f"{path}: 'config' must be an object of config overrides")
    return {"regimes": _names(path, data, "regimes"), "methods": _names(path, data, "methods"), "seeds": seeds,
            "preset": data.get("preset"), "config": data.get("config") or {}}


def _read_regime_json(path: Path, name: str) -> tuple[str, list[str]]:
    """(kind, target sources); a regime not started yet has no regime.json: its name, no targets."""
    if not path.is_file():
        return name, []
    data = read_json_object(path, "the regime's settings")
    kind, targets = data.get("regime", name), data.get("target_sources", [])
    if not isinstance(kind, str) or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{path}: expected 'regime' (a name) and 'target_sources' (a list of source names)")
    return kind, targets


def load_regime(directory: Path, name: str, methods: list[str], seeds: list[int]) -> RegimeView:
    kind, targets = _read_regime_json(directory / "regime.json", name)
    runs: dict[str, dict[int, RunView]] = {m: {} for m in methods}
    not_started: dict[str, list[int]] = {m: [] for m in methods}
    for method in methods:
        for seed in seeds:
            cell = directory / method / f"seed-{seed}"
            if has_rounds(cell):
                runs[method][seed] = load_run(cell)
            else:
                not_started[method].append(seed)
    return RegimeView(name, kind, targets, runs, not_started)


def load_bench(directory: str | os.PathLike) -> BenchView:
    """Read `directory/bench.json` and every cell it names; a garbled file is a one-line ValueError naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    meta = _read_bench_json(directory / "bench.json")
    bench = BenchView(directory, meta["preset"], meta["methods"], meta["seeds"], meta["config"])
    for name in meta["regimes"]:
        bench.regimes[name] = load_regime(directory / name, name, meta["methods"], meta["seeds"])
    return bench
