"""`gradalign bench regimes`: methods × the paper's three data regimes × seeds, at equal GRPO steps.

Every (regime, method, seed) cell is an ordinary curriculum run directory, OUT/<regime>/<method>/seed-<s>/, so a
killed benchmark resumes cell by cell (and inside a cell, round by round) and a finished cell is never recomputed.
The seed drives the scenario (pool, validation and test problems), sampling and training alike; all methods of a
(regime, seed) pair see the very same problems, written once to OUT/<regime>/data/seed-<s>/ for inspection.
`gradalign report OUT` rebuilds report.md / report.html from the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path

from . import csv_list

log = logging.getLogger(__name__)

PAPER_REGIMES = ["unreliable-rewards", "imbalance", "low-utility"]  # every preset's default
REGIMES = [*PAPER_REGIMES, "mixed"]  # mixed: the three at once in one pool (--regimes mixed)
# SmolLM2-135M's arithmetic with coin-flip rewards, and a skewed mix of it (preset smollm2); its word problems with
# coin-flip rewards (preset smollm2-gsm)
REAL_MODEL_REGIMES = ["smollm2-coin", "smollm2-skewed", "gsm-symbolic"]
# Sized for 2 CPU cores: "quick" finishes in under 15 minutes with its methods (a smoke test: 16 GRPO steps decide
# nothing); "standard" is the benchmark that decides: the demo's sizes (64 GRPO steps, chunk 256 -> 32), its 14
# arms (9 methods; 3 also under schedule batch, 2 under the lean round), 5 seeds, about 90 minutes with 2 workers;
# "full" is the same sizes with every method of the registry.
DEMO_SIZES = dict(pool_size=2000, validation_size=64, test_size=256, chunk_size=256, selection_ratio=8,
                  rollouts_per_problem=8, validation_rollouts=8, rounds=8, steps_per_round=8, problems_per_step=16,
                  num_generations=8, eval_samples=4)
PRESETS: dict[str, dict] = {
    "quick": dict(pool_size=512, validation_size=32, test_size=128, chunk_size=128, selection_ratio=8,
                  rollouts_per_problem=8, validation_rollouts=8, rounds=4, steps_per_round=4, problems_per_step=8,
                  num_generations=8, eval_samples=2, warmup_problems=32, warmup_steps=2, projection_dim=2048,
                  offline_validation_rollouts=16),
    # CROPI's sparse map costs ~12x GradAlign's scoring on CPU (docs/methods.md: CROPI); khatri-rao-energy is at least as
    # faithful to the exact inner products (gradalign bench fidelity), so the standard preset uses it
    "standard": dict(DEMO_SIZES, projection="khatri-rao-energy", projection_dim=4096),
    "full": DEMO_SIZES,
    # SmolLM2-135M-Instruct on the arithmetic it half-solves (docs/benchmarks.md: a real LLM): k = 8 so that clean
    # problems vary, 16 new tokens, 12 GRPO steps of 4 problems x 8 completions at 1e-5 (3e-5 gained, then lost it
    # all by step 12; TRL's 1e-6 moved nothing: checked with the `math` verifier), greedy test accuracy on 128
    # problems. Sized for 2 CPU cores (--threads 2): a full, random or batch cell takes 6-11 minutes, a cell of the
    # published round with gradients about an hour
    "smollm2": dict(model_name_or_path="smollm2-135m", verifier="task", pool_size=256, validation_size=32,
                    test_size=128, chunk_size=64, selection_ratio=4, rollouts_per_problem=8, validation_rollouts=8,
                    max_completion_length=16, rounds=3, steps_per_round=4, problems_per_step=4, num_generations=8,
                    learning_rate=1e-5, eval_samples=0, micro_batch=32, rollout_batch=64),
    # SmolLM2-135M on 2 CPU cores, where exact scoring is one forward+backward of a 135M model over every scored
    # completion: each cell is small (a chunk of 32 per round, 2 rounds of 3 GRPO steps, 64 new tokens, which the
    # word problems mostly overrun); an example on a real model, not a verdict
    "smollm2-gsm": dict(model_name_or_path="smollm2-135m", verifier="task", pool_size=192, validation_size=16,
                        test_size=48, chunk_size=32, selection_ratio=4, rollouts_per_problem=4, validation_rollouts=4,
                        rounds=2, steps_per_round=3, problems_per_step=4, num_generations=4,
                        max_completion_length=64, eval_samples=0, micro_batch=8, rollout_batch=32),
}
QUICK_METHODS = ["gradalign", "learnalign", "cropi", "random", "accgreedy", "full"]
# gradalign-zcos (an ablation: it sat between the cosine and z everywhere) is left to the full preset
STANDARD_METHODS = ["gradalign-lfdr", "gradalign", "gradalign-z", "learnalign", "cropi", "random", "accgreedy", "nonzero-variance",
                    "full", "gradalign@batch", "gradalign-z@batch", "nonzero-variance@batch", "gradalign@lean",
                    "gradalign-z@lean"]
DEFAULT_METHODS = {"quick": QUICK_METHODS, "standard": STANDARD_METHODS,  # full: every method of the registry
                   # cheap first; unpadded batch steps paid on the clock there, refilled ones in accuracy;
                   # full@x2 is plain GRPO given the refilled arm's time, consistent@teach-refill the refill
                   # without gradients (docs/benchmarks.md: a real LLM)
                   "smollm2": ["full", "random", "consistent@batch", "gradalign-lfdr@teach",
                               "gradalign-lfdr@batch-lean", "gradalign-lfdr@teach-refill", "full@x2",
                               "consistent@teach-refill", "nonzero-variance", "gradalign-lfdr", "gradalign"],
                   "smollm2-gsm": ["gradalign", "gradalign-z", "random"]}
DEFAULT_SEEDS = {"standard": 5, "smollm2-gsm": 2}  # the others: 3
DEFAULT_REGIMES = {"smollm2": ["smollm2-coin"], "smollm2-gsm": ["gsm-symbolic"]}  # the others: PAPER_REGIMES


@dataclasses.dataclass
class BenchPlan:
    out: Path
    regimes: list[str]
    methods: list[str]
    seeds: list[int]
    preset: str
    overrides: dict
    workers: int = 1  # processes sharing the cells, one torch thread each
    threads: int | None = None  # one process: its torch threads (None: torch's default)
    keep_checkpoints: bool = False  # a finished cell's last checkpoint (weights + optimizer: ~1.5 GB for SmolLM2)

    def cell(self, regime: str, method: str, seed: int) -> Path:
        return self.out / regime / method / f"seed-{seed}"

    def config(self, regime: str, method: str, seed: int):
        from ..config import RunConfig
        base = {**PRESETS[self.preset], **self.overrides}
        return RunConfig.of(**{**base, "scenario": regime, **arm(method, base["rounds"]), "seed": seed,
                               "output_dir": str(self.cell(regime, method, seed))})


# Named variants of a method's schedule, run as arms `METHOD@VARIANT` beside the method itself. The published round
# (256 candidates x 8 rollouts -> 32 problems, trained on 4 times each, direction from 64 x 8 validation completions)
# costs 2.4 selection completions per training completion; `lean` keeps that round's repetition and brings the ratio
# to 1.0 by construction: half the candidates kept a quarter (128 -> 32), the direction measured every other round
# from 4 completions per validation problem ((1024 + 256 / 2 - 128 reused) / 1024 = 1.0). `batch-lean` is the batch
# schedule with lean's validation direction: where that direction is most of the selection's bill (SmolLM2: two
# thirds of it), a quarter of it remains. `teach` is batch-lean training only on the groups that can teach
# (`pad_steps: false`): a step with fewer of them is smaller instead of padded with proven noise; `teach-scaled` also
# scales such a step's learning rate by its share of B (`scale_short_steps`), so that it moves the weights less too;
# `teach-refill` fills a short step from up to two more draws of candidates instead (`max_draws`: DAPO's dynamic
# sampling), so that its steps train on as many clean groups as `full`'s train on groups. `xN` (any N >= 2) runs
# the arm N times as many rounds: `full@x2` is plain GRPO given about the wall time of a method whose steps cost
# twice full's, the equal-cost reference the report reads every method against (reports/bench_cost.py).
LEAN_VALIDATION = {"validation_every": 2, "validation_rollouts": 4}
VARIANTS: dict[str, dict] = {
    "batch": {"schedule": "batch"},
    "lean": {"chunk_size": 128, "selection_ratio": 4, **LEAN_VALIDATION},
    "batch-lean": {"schedule": "batch", **LEAN_VALIDATION},
    "teach": {"schedule": "batch", **LEAN_VALIDATION, "pad_steps": False},
    "teach-scaled": {"schedule": "batch", **LEAN_VALIDATION, "pad_steps": False, "scale_short_steps": True},
    "teach-refill": {"schedule": "batch", **LEAN_VALIDATION, "pad_steps": False, "max_draws": 3},
}


def arm(spec: str, rounds: int = 1) -> dict:
    """A benchmark arm's config fields: `METHOD` (as configured), `METHOD@VARIANT` (e.g. gradalign@batch) or
    `METHOD@xN` (N times the benchmark's `rounds`)."""
    from ..reports.bench_views import rounds_multiple
    method, _, variant = spec.partition("@")
    if times := rounds_multiple(spec):
        return {"method": method, "rounds": rounds * times}
    if variant and variant not in VARIANTS:
        raise ValueError(f"bench regimes: unknown variant '@{variant}' in '{spec}' (choose from: "
                         f"{', '.join('@' + v for v in VARIANTS)}, or @xN: N >= 2 times the rounds)")
    return {"method": method, **VARIANTS.get(variant, {})}


def finished(cell: Path, rounds: int) -> bool:
    """A cell whose run directory records every round (checked without loading a model)."""
    path = cell / "rounds.jsonl"
    return path.exists() and sum(1 for line in path.read_text().splitlines() if line.strip()) >= rounds


def plan_from_args(args: argparse.Namespace) -> BenchPlan:
    from ..config import SCENARIO_FIELDS, RunConfig
    from ..selection import REGISTRY
    methods = args.methods or DEFAULT_METHODS.get(args.preset, list(REGISTRY))
    regimes = args.regimes or DEFAULT_REGIMES.get(args.preset, PAPER_REGIMES)
    unknown = ([m for m in methods if arm(m)["method"] not in REGISTRY]
               + [r for r in regimes if r not in REGIMES + REAL_MODEL_REGIMES])
    if unknown:
        raise ValueError(f"bench regimes: unknown method or regime '{unknown[0]}' (methods: {', '.join(REGISTRY)}, "
                         f"each optionally @{'/@'.join(VARIANTS)} or @xN; regimes: "
                         f"{', '.join(REGIMES + REAL_MODEL_REGIMES)})")
    overrides: dict = {}
    if args.config:
        overrides = {k: v for k, v in RunConfig.yaml_values(args.config).items()
                     if k not in ("scenario", "method", "seed", "output_dir")}  # the benchmark sets these per cell
    # the scenario knobs given as flags win over the YAML; each regime reads only its own (config.SCENARIO_KNOBS)
    overrides.update({k: getattr(args, k) for k in SCENARIO_FIELDS if getattr(args, k, None) is not None})
    RunConfig.of(**{**PRESETS[args.preset], **overrides}).check_with_trl()  # bad values: one line, before any cell
    n_seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS.get(args.preset, 3)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    if args.workers < 1:
        raise ValueError(f"bench regimes: --workers must be >= 1 (got {args.workers})")
    if args.threads is not None and (args.threads < 1 or args.workers > 1):
        raise ValueError(f"bench regimes: --threads must be >= 1 and sets one process's threads (got --threads "
                         f"{args.threads} with --workers {args.workers}; each worker runs one thread)")
    return BenchPlan(Path(args.out), list(regimes), list(methods), seeds, args.preset, overrides, args.workers,
                     args.threads, args.keep_checkpoints)


def run_bench(plan: BenchPlan, echo=print) -> Path:
    """Run every pending cell (in `plan.workers` processes), then write the report; returns the report's path."""
    from .. import fileio
    from ..policy.warmstart import warm_started_tiny
    fileio.write_json(plan.out / "bench.json", bench_settings(plan))
    if plan.config(plan.regimes[0], plan.methods[0], 0).model_args.model_name_or_path == "tiny":
        warm_started_tiny()  # trained once and cached, outside every cell's timings
    if plan.workers == 1:
        if plan.threads is not None:
            import torch
            torch.set_num_threads(plan.threads)
        run_cells(plan, 0, 1, echo)
    else:
        run_workers(plan)
    from ..reports.benchmark import bench_report
    return bench_report(plan.out)


def bench_settings(plan: BenchPlan) -> dict:
    """bench.json: what the report covers. Cells added to an existing benchmark of the same preset and settings
    (another arm, regime or seed) extend it: the report keeps what was there and shows the new cells beside it."""
    settings = {"preset": plan.preset, "regimes": plan.regimes, "methods": plan.methods, "seeds": plan.seeds,
                "config": {**PRESETS[plan.preset], **plan.overrides}}
    path = plan.out / "bench.json"
    if not path.exists():
        return settings
    from .. import fileio
    old = fileio.read_json(path)
    if (old.get("preset"), old.get("config")) != (settings["preset"], settings["config"]):
        return settings
    merged = {key: list(dict.fromkeys([*old.get(key, []), *settings[key]])) for key in ("regimes", "methods", "seeds")}
    return {**settings, **merged}


def run_cells(plan: BenchPlan, index: int, count: int, echo=print) -> None:
    """The pending cells whose position is `index` modulo `count` (all of them for one process)."""
    from .. import fileio
    from ..curriculum.loop import Curriculum
    from ..curriculum.setup import load_problem_sets
    from ..data.regimes import write_scenario
    cells = [(r, m, s) for r in plan.regimes for s in plan.seeds for m in plan.methods]
    scenarios: dict[tuple[str, int], object] = {}  # built once per (regime, seed): every method gets these problems
    start = time.perf_counter()
    for i, (regime, method, seed) in enumerate(cells, 1):
        cfg = plan.config(regime, method, seed)
        cell = plan.cell(regime, method, seed)
        if (i - 1) % count != index or finished(cell, cfg.rounds):
            continue
        if (regime, seed) not in scenarios:
            scenarios[regime, seed] = load_problem_sets(cfg)
            data = plan.out / regime / "data" / f"seed-{seed}"
            if not (data / "scenario.json").exists():  # several workers may write it: same content, atomic files
                write_scenario(scenarios[regime, seed], data)
            fileio.write_json(plan.out / regime / "regime.json", {
                "regime": regime, "target_sources": target_sources(scenarios[regime, seed])})
        sets = scenarios[regime, seed]
        t = time.perf_counter()
        result = Curriculum(cfg, sets).run()
        echo(f"[{i}/{len(cells)}] {regime} / {method} / seed {seed}: test accuracy "
             f"{result.initial['accuracy']:.3f} -> {result.final_accuracy:.3f} ({time.perf_counter() - t:.0f} s; "
             f"{time.perf_counter() - start:.0f} s so far)")
        if not plan.keep_checkpoints:  # the report reads the records; a finished cell never resumes
            shutil.rmtree(cell / "checkpoints", ignore_errors=True)


def target_sources(sets) -> list[str]:
    """The validation set's sources where they are a strict part of the pool's (a skewed pool's target task); none
    where validation covers every source of the pool (a target share would read 1.0 for every arm)."""
    wanted = {p.source for p in sets.validation}
    return sorted(wanted) if wanted < {p.source for p in sets.pool} else []


def _worker(plan: BenchPlan, index: int) -> None:
    import torch
    torch.set_num_threads(1)  # one core each: tiny models lose more to two threads' contention than they gain
    run_cells(plan, index, plan.workers, echo=lambda text: print(text, flush=True))  # lines from both, as they come


def run_workers(plan: BenchPlan) -> None:
    """`plan.workers` processes share the cells (cell i goes to worker i mod N); a failed worker is an error after
    the others finish (what it finished is kept: rerun to resume)."""
    import multiprocessing
    import os
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        workers = [context.Process(target=_worker, args=(plan, i)) for i in range(plan.workers)]
        for w in workers:
            w.start()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    for w in workers:
        w.join()
    failed = [i for i, w in enumerate(workers) if w.exitcode]
    if failed:
        raise RuntimeError(f"bench regimes: worker {failed[0]} stopped with exit code {workers[failed[0]].exitcode}; "
                           f"the finished cells are kept: rerun the same command to resume")


def add_regimes_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("regimes", help="every method on the paper's three data regimes, several seeds")
    parser.add_argument("--regimes", type=csv_list(), default=None,
                        help=f"comma-separated regimes of {','.join(REGIMES + REAL_MODEL_REGIMES)} (default: "
                             f"{','.join(PAPER_REGIMES)}; preset smollm2: smollm2-coin; preset smollm2-gsm: "
                             f"gsm-symbolic)")
    parser.add_argument("--methods", type=csv_list(), default=None,
                        help=f"comma-separated methods (default: quick preset {','.join(QUICK_METHODS)}; "
                             f"standard preset {','.join(STANDARD_METHODS)}; full preset every method of the "
                             f"registry)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="how many seeds per (regime, method) (default: 5 for the standard preset, else 3)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are FIRST..FIRST+N-1 (default: 0); e.g. check a result on seeds it was not seen on")
    parser.add_argument("--preset", choices=list(PRESETS), default="quick",
                        help="quick: a smoke test, under 15 minutes on 2 CPU cores; standard: the benchmark that "
                             "decides (the demo's sizes, 14 arms, 5 seeds, about 90 minutes with --workers 2); full: "
                             "the demo's sizes with every method; smollm2: SmolLM2-135M-Instruct on arithmetic with "
                             "coin-flip rewards (smollm2-coin; smollm2-skewed on request): full, random, consistent and "
                             "the default on the batch schedule, full for twice the steps, nonzero-variance, the "
                             "default and gradalign, 3 seeds, about 2 hours a seed with --threads 2; "
                             "smollm2-gsm: SmolLM2-135M on gsm-symbolic word "
                             "problems with coin-flip rewards, gradalign, gradalign-z and random, 2 seeds, about 2 "
                             "hours (default: quick)")
    parser.add_argument("--config", help="YAML of RunConfig fields overriding the preset (sizes, model, ...)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the cells, one thread each (2 on a 2-core machine: about half the "
                             "wall time) (default: 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the one process (--workers 1), e.g. 2 for a real model on 2 cores "
                             "(default: torch's own)")
    parser.add_argument("--out", default="runs/bench-regimes", help="benchmark directory (rerun to resume)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each finished cell's last checkpoint (weights and optimizer state: ~1.5 GB a cell "
                             "for SmolLM2-135M); by default a finished cell's checkpoints are deleted")
    from ..flags import add_config_flags
    from ..config import SCENARIO_FIELDS, RunConfig
    knobs = parser.add_argument_group("scenario knobs (RunConfig fields, over --config; each regime reads its own)")
    add_config_flags(knobs, skip=tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in SCENARIO_FIELDS))
    parser.set_defaults(func=lambda args: print(run_bench(plan_from_args(args))) or 0)
    return parser
