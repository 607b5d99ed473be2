"""`gradalign bench scaling`: one GradAlign round with 1 process and with N, side by side.

Each setting is a real `gradalign run` (one round: rollouts → validation direction → scoring → selection → GRPO
steps → evaluation) started by `torchrun --nproc_per_node N` in a child process, gloo on CPU and NCCL on GPUs.
The round's own timings (rank 0's, from rounds.jsonl) give the split. Both settings see the same problems and
seeds, so they must select the same problems; the benchmark checks that too. With T torch threads per process
the settings use N·T cores: on 2 cores, 1 process × 1 thread against 2 processes × 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from . import csv_list, publish

# One round at the demo's sizes, smaller test set; rollout_batch 32 gives 8 chunk blocks and 2 validation blocks.
SIZES = dict(pool_size=512, validation_size=64, test_size=128, chunk_size=256, selection_ratio=8,
             rollouts_per_problem=8, validation_rollouts=8, rollout_batch=32, rounds=1, steps_per_round=4,
             problems_per_step=8, num_generations=8, eval_samples=2)
PHASES = ["rollouts", "validation_rollouts", "scoring", "selection", "training", "evaluation", "total"]


def division(sizes: dict, world: int) -> list[dict]:
    """What each rank does in the round: its blocks of the chunk, validation and test sets, and its completions
    per GRPO step."""
    from ..distributed import ProcessGroup
    block = sizes["rollout_batch"]
    rows = []
    for rank in range(world):
        group = ProcessGroup(rank=rank, world_size=world)
        rows.append({"rank": rank, **{name: len(group.shard(sizes[key], block)[1]) for name, key in
                                      (("chunk", "chunk_size"), ("validation", "validation_size"),
                                       ("test", "test_size"))},
                     "completions_per_step": sizes["problems_per_step"] * sizes["num_generations"] // world})
    return rows


def flags(values: dict) -> list[str]:
    from ..config import RunConfig
    return [arg for key, value in values.items() for arg in (RunConfig.flag(key), str(value))]


def run_setting(processes: int, sizes: dict, out: Path, threads: int, device: str) -> dict:
    """One round under torchrun with `processes` processes; its timings, selection and wall time."""
    from ..distributed import torchrun_command
    cmd = torchrun_command(processes, ["-m", "gradalign.cli", "run", "--method", "gradalign", "--device", device,
                                       "--output-dir", str(out), *flags(sizes)])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"bench scaling: {processes} process(es) failed:\n{done.stderr[-2000:]}")
    record = json.loads((out / "rounds.jsonl").read_text().splitlines()[0])
    timings = record["timings"]
    signal_seconds = sum(timings.get(k, 0.0) for k in ("rollouts", "validation_rollouts", "scoring"))
    return {"processes": processes, "timings": {k: timings.get(k, 0.0) for k in PHASES},
            "scored_per_second": record["candidates"] / signal_seconds, "wall_seconds": round(wall, 2),
            "selected_ids": record["selected_ids"], "test_accuracy": record["test"]["accuracy"]}


def table(results: list[dict]) -> str:
    base = results[0]
    header = f"{'processes':>9}  {'scored/s':>8}  " + "  ".join(f"{p:>10}" for p in PHASES[:-1]) + \
        f"  {'round (s)':>9}  {'speed-up':>8}"
    lines = [header, "─" * len(header)]
    for r in results:
        t = r["timings"]
        lines.append(f"{r['processes']:>9}  {r['scored_per_second']:>8.1f}  "
                     + "  ".join(f"{t[p]:>10.2f}" for p in PHASES[:-1])
                     + f"  {t['total']:>9.2f}  {base['timings']['total'] / t['total']:>7.2f}×")
    return "\n".join(lines)


def division_table(sizes: dict, world: int) -> str:
    lines = ["rank  chunk problems  validation problems  test problems  completions per GRPO step"]
    for row in division(sizes, world):
        lines.append(f"{row['rank']:>4}  {row['chunk']:>14}  {row['validation']:>19}  {row['test']:>13}  "
                     f"{row['completions_per_step']:>24}")
    return "\n".join(lines)


def run_scaling(processes: list[int], out: str, threads: int = 1, device: str = "auto", sizes: dict | None = None,
                echo=print) -> dict:
    from . import machine_info
    sizes = {**SIZES, **(sizes or {})}
    root = Path(out)
    results = []
    for n in processes:
        cell = root / f"processes-{n}"
        if (cell / "rounds.jsonl").exists():  # a cell from an earlier call would be resumed, not re-timed
            raise ValueError(f"{cell}: already holds a run; choose a new --out")
        if echo:
            echo(f"one GradAlign round with {n} process(es) ...")
        results.append(run_setting(n, sizes, cell, threads, device))
    same = all(r["selected_ids"] == results[0]["selected_ids"] for r in results)
    text = table(results)
    widest = max(processes)
    footer = (f"How the work divides with {widest} processes (blocks of rollout_batch {sizes['rollout_batch']} "
              f"problems, round-robin):\n{division_table(sizes, widest)}\n\n"
              f"Same selection in every setting: {'yes' if same else 'NO'}. scored/s = chunk problems / (rollouts + "
              f"validation rollouts + scoring). {threads} torch thread(s) per process.")
    result = {"sizes": sizes, "threads": threads, "results": results, "same_selection": same,
              "division": division(sizes, widest), "machine": machine_info()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "scaling.md").write_text(f"# gradalign bench scaling\n\n```\n{text}\n\n{footer}\n```\n")
    return publish(result, text, footer, str(root / "scaling.json"), echo)


def add_scaling_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("scaling", help="one GradAlign round with 1 and N processes (torchrun): throughput "
                                                   "and the round's time split")
    parser.add_argument("--processes", type=csv_list(int), default=[1, 2],
                        help="comma-separated process counts, the first is the baseline (default: 1,2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--out", default="runs/bench-scaling", help="directory for the runs and scaling.json/.md")
    parser.set_defaults(func=lambda args: run_scaling(args.processes, args.out, args.threads, args.device) and 0)
    return parser
