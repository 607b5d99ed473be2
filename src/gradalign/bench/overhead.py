"""`gradalign bench overhead`: what selection costs per round, next to the GRPO training it chooses problems for.

Each method runs the real curriculum (`curriculum.loop.Curriculum`, what `gradalign run` and `gradalign demo` run)
at the demo's settings, unless flags or a YAML say otherwise, into OUTPUT_DIR/<method>/. All methods see the very
same pool, validation and test problems, one after another in one process. The figures are the rounds' own timings,
read back from each run's rounds.jsonl (`curriculum.records`); nothing here times anything itself.

Per round, a method's selection overhead is what `records.TIME_GROUPS` counts as rollouts and scoring, without the
one-time costs: candidate rollouts + validation rollouts + LearnAlign's warm-up + scoring + selection, divided by
the round's GRPO training time. One-time costs (CROPI's offline rollouts, timed once per run and recorded in round
0) are reported on their own, never mixed into the per-round figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from . import csv_list, publish

METHODS = ["gradalign", "gradalign-z", "learnalign", "cropi", "random", "accgreedy"]
ROUNDS = 2  # the demo runs 8; 2 keep the whole default benchmark to a few minutes on 2 CPU cores
# (column, the round timing it reads): the parts of a round, in the order they happen
PARTS = [("candidate_rollouts", "rollouts"), ("validation_rollouts", "validation_rollouts"), ("warmup", "warmup"),
         ("scoring", "scoring"), ("selection", "selection"), ("training", "training"), ("evaluation", "evaluation")]
ONE_TIME = ("offline_rollouts",)  # paid once per run; the loop records it in round 0's timings (and in its total)
HEADERS = {"candidate_rollouts": "cand roll", "validation_rollouts": "val roll", "warmup": "warm-up",
           "scoring": "scoring", "selection": "select", "training": "training", "evaluation": "eval"}


def selection_keys() -> tuple[str, ...]:
    """The per-round timings that are selection cost: records.TIME_GROUPS' rollouts and scoring, less one-time ones."""
    from ..curriculum.records import TIME_GROUPS
    return tuple(k for k in TIME_GROUPS["rollouts"] + TIME_GROUPS["scoring"] if k not in ONE_TIME)


def _seconds(timings: dict, key: str) -> float:
    from ..curriculum.records import is_number
    value = timings.get(key)
    return float(value) if is_number(value) and not math.isnan(value) else 0.0  # untimed: 0 (random never scores)


def _ratio(part: float, training: float) -> float | None:
    return part / training if training > 0 else None


def round_row(record: dict) -> dict:
    """One round's parts in seconds and as ratios to its training time; its overhead; its one-time costs."""
    timings = record.get("timings") if isinstance(record.get("timings"), dict) else {}
    seconds = {name: _seconds(timings, key) for name, key in PARTS}
    one_time = {key: _seconds(timings, key) for key in ONE_TIME if _seconds(timings, key) > 0}
    seconds["overhead"] = sum(_seconds(timings, key) for key in selection_keys())
    seconds["round"] = _seconds(timings, "total") - sum(one_time.values())
    # what the parts leave of the round: writing the selection and scores files, CROPI's optional off-policy check
    seconds["other"] = seconds["round"] - sum(seconds[name] for name, _ in PARTS)
    training = seconds["training"]
    return {"round": record.get("round"), "seconds": {k: round(v, 6) for k, v in seconds.items()},
            "x_training": {name: _ratio(value, training) for name, value in seconds.items()},
            "overhead": _ratio(seconds["overhead"], training), "one_time": one_time}


def method_row(method: str, records: list[dict]) -> dict:
    """A method's rounds, their mean (seconds: mean over rounds; ratios: the ratio of those means, i.e. of the sums)
    and its one-time costs, with the overhead they add when spread over the run's rounds."""
    rounds = [round_row(r) for r in records]
    n = max(len(rounds), 1)
    names = rounds[0]["seconds"] if rounds else {}
    mean = {name: round(sum(r["seconds"][name] for r in rounds) / n, 6) for name in names}
    training = mean.get("training", 0.0)
    one_time = {key: sum(r["one_time"].get(key, 0.0) for r in rounds) for key in ONE_TIME}
    one_time = {key: value for key, value in one_time.items() if value > 0}
    once = sum(one_time.values())
    ratios = {name: _ratio(value, training) for name, value in mean.items()}
    return {"method": method, "rounds": rounds, "mean": {"seconds": mean, "x_training": ratios},
            "overhead": _ratio(mean.get("overhead", 0.0), training), "one_time": one_time,
            "one_time_x_training": _ratio(once, training),  # the one-time cost in rounds' worth of training
            "overhead_with_one_time": _ratio(mean.get("overhead", 0.0) + once / n, training),  # spread over the rounds
            "test_accuracy": records[-1]["test"]["accuracy"] if records else None}


def _cell(value: float | None, width: int, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return f"{'—':>{width}}"
    return f"{value:>{width - len(suffix)}.{digits}f}{suffix}"


def table(rows: list[dict]) -> str:
    """Two fixed-width tables: seconds per round, then the same parts as multiples of the round's training."""
    names = [name for name, _ in PARTS]
    out = []
    for title, key, suffix in (("seconds per round", "seconds", ""), ("× training time of the round", "x_training",
                                                                        "×")):
        header = (f"{'method':<13}{'round':>5}  {'overhead':>9}  " + "  ".join(f"{HEADERS[n]:>9}" for n in names)
                  + f"  {'round':>8}")
        lines = [title, header, "─" * len(header)]
        for row in rows:
            for label, part in [("mean", row["mean"])] + [(str(r["round"]), r) for r in row["rounds"]]:
                values = part[key]
                first = row["method"] if label == "mean" else ""
                lines.append(f"{first:<13}{label:>5}  {_cell(values.get('overhead'), 9, suffix=suffix)}  "
                             + "  ".join(_cell(values.get(n), 9, suffix=suffix) for n in names)
                             + f"  {_cell(values.get('round'), 8, suffix=suffix)}")
        out.append("\n".join(lines))
    once = [f"  {row['method']}: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in row["one_time"].items())
            + f" ({_cell(row['one_time_x_training'], 0)}× a round's training; overhead with it spread over "
              f"{len(row['rounds'])} round(s): {_cell(row['overhead_with_one_time'], 0)}×)"
            for row in rows if row["one_time"]]
    out.append("one-time costs (in round 0's record, not in the rows above):\n" + ("\n".join(once) or "  none"))
    return "\n\n".join(out)


FOOTER = ("overhead = (candidate rollouts + validation rollouts + warm-up + scoring + selection) / training, from "
          "each round's own timings (rounds.jsonl). mean: seconds averaged over rounds; its ratios are ratios of those "
          "means. Warm-up is LearnAlign's (0 for the others); round = the round's wall time without one-time costs. "
          "Round 0 also pays lazy initialisation. One run, one seed on a shared machine: ratios, not absolute seconds, "
          "carry over.")


def check_methods(methods: list[str]) -> None:
    from ..selection import REGISTRY
    for name in methods:
        if name not in REGISTRY:
            raise ValueError(f"bench overhead: unknown method '{name}' (choose from: {', '.join(REGISTRY)})")
        if not REGISTRY[name].needs_rollouts:
            raise ValueError(f"bench overhead: '{name}' selects nothing (it trains on the whole pool): it has no "
                             f"selection overhead to measure")
    if len(set(methods)) != len(methods):
        raise ValueError("bench overhead: a method is listed twice")


def run_overhead(methods: list[str], base, out: str | None = "benchmarks/results/overhead.json", threads: int = 1,
                 echo=print) -> dict:
    """Run the curriculum for each method into base.output_dir/<method>/ and tabulate the rounds' timings."""
    import torch
    from . import machine_info
    from ..curriculum.loop import Curriculum
    from ..curriculum.records import ROUNDS_FILE, read_rounds
    from ..curriculum.setup import load_problem_sets
    from ..policy.warmstart import warm_started_tiny
    check_methods(methods)
    if threads < 1:
        raise ValueError(f"bench overhead: --threads must be >= 1 (got {threads})")
    root = Path(base.output_dir)
    cells = {m: root / m for m in methods}
    for cell in cells.values():  # a resumed run would report another run's timings (and skip CROPI's one-time cost)
        if cell.exists() and any(cell.iterdir()):
            raise ValueError(f"{cell}: already holds a run; choose a new --output-dir")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if base.model_args.model_name_or_path == "tiny":
            warm_started_tiny()  # trained once and cached, outside every run's timings
        sets = load_problem_sets(base)  # every method gets the very same problems
        rows = []
        for method in methods:
            if echo:
                echo(f"{method}: {base.rounds} round(s) into {cells[method]} ...")
            Curriculum(dataclasses.replace(base, method=method, output_dir=str(cells[method])), sets).run()
            rows.append(method_row(method, read_rounds(cells[method] / ROUNDS_FILE)))
        info = machine_info()
    finally:
        torch.set_num_threads(previous)
    config = {k: v for k, v in base.to_dict().items() if k not in ("method", "output_dir")}
    result = {"methods": methods, "rounds": base.rounds, "threads": threads, "output_dir": str(root),
              "selection_keys": list(selection_keys()), "one_time_keys": list(ONE_TIME), "config": config,
              "results": rows, "machine": info}
    return publish(result, table(rows), FOOTER, out, echo)


def config_from_args(args: argparse.Namespace):
    from ..config import RunConfig
    from ..flags import overrides
    given = overrides(args)  # our --rounds, --seed, --output-dir and every RunConfig flag given
    given["output_dir"] = args.output_dir or "runs/bench-overhead"
    if args.rounds is None and not (args.config and "rounds" in RunConfig.yaml_values(args.config)):
        given["rounds"] = ROUNDS  # the benchmark's default sits under the YAML's
    return RunConfig.from_sources(args.config, given)


def run_from_args(args: argparse.Namespace) -> int:
    run_overhead(args.methods, config_from_args(args), out=args.out, threads=args.threads)
    return 0


def add_overhead_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", type=csv_list(), default=METHODS,
                        help=f"comma-separated selection methods (default: {','.join(METHODS)}; 'full' selects "
                             f"nothing)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds per method (default: {ROUNDS}; the demo runs 8)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=None,
                        help="directory of the runs, one sub-directory per method; must not hold them already "
                             "(default: runs/bench-overhead)")
    parser.add_argument("--out", default="benchmarks/results/overhead.json", help="JSON results file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--config", help="YAML of RunConfig fields overriding the demo's defaults; flags override it")
    from ..flags import add_config_flags
    group = parser.add_argument_group("RunConfig fields (the demo's defaults unless given)")
    add_config_flags(group, skip=("method", "rounds", "output_dir"))


def add_overhead_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("overhead", help="selection cost per round (rollouts + scoring) against training, "
                                                    "per method, at the demo's settings")
    add_overhead_arguments(parser)
    parser.set_defaults(func=run_from_args)
    return parser
