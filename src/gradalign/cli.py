"""The `gradalign` command: demo, run, select, rollouts, report, methods, bench.

`run` maps one-to-one onto `RunConfig`: every field is a `--flag`, a YAML file gives the base values.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from .config import RunConfig
from .distributed import is_main_process, launched_world_size
from .flags import add_config_flags, overrides, renamed_flag, trl_flags

log = logging.getLogger("gradalign")
# the default and the published GradAlign (README: "Which method to use"), and the baselines everyone compares to
DEMO_METHODS = ["gradalign-lfdr", "gradalign", "random", "accgreedy", "full"]
ONE_SEED = ("These figures are one seed on one machine: differences of a few points are noise. `gradalign bench "
            "regimes --preset standard` gives mean ± std over 5 seeds.")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("transformers", "trl", "accelerate", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury our one-line errors
    import warnings
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


TAKES_TRL_FLAGS = ("run", "demo", "select", "rollouts")  # the commands that build a RunConfig
TRL_FLAGS_HELP = ("TRL's own fields are flags too, under TRL's names and parsed by TRL: every GRPOConfig, "
                  "ModelConfig and `trl grpo` script argument (--model_name_or_path, --learning_rate, "
                  "--max_completion_length, --num_generations, --use_peft, --report_to, ...; `trl grpo --help` lists "
                  "them).")


def cmd_run(args: argparse.Namespace) -> int:
    from .curriculum.loop import Curriculum
    from .reports import report
    cfg = RunConfig.from_sources(args.config, overrides(args))
    start = time.perf_counter()
    result = Curriculum(cfg).run()
    if not is_main_process():  # one report per run, from rank 0
        return 0
    print(report(result.output_dir))
    print(f"\n{cfg.method}: test accuracy {result.initial['accuracy']:.3f} -> {result.final_accuracy:.3f} "
          f"in {time.perf_counter() - start:.0f} s; run directory {result.output_dir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """GradAlign, GradAlign-z, random, AccGreedy and plain GRPO on the whole pool (full) on the default scenario, same
    GRPO steps: one table, its cost ledger and one plot."""
    from .curriculum.loop import Curriculum
    from .curriculum.setup import load_problem_sets
    from .policy.warmstart import warm_start_info, warm_started_tiny
    from .reports import report
    out = Path(args.output_dir or "runs/demo")
    base = RunConfig.from_sources(args.config, {**overrides(args), "output_dir": str(out)})
    start = time.perf_counter()
    if base.model_args.model_name_or_path == "tiny":
        warm_started_tiny()  # trained once and cached; reported separately from the comparison
        info = warm_start_info()
        log.info("warm start: sampled accuracy %.2f after %d SFT steps (cached)", info.get("sampled_accuracy", 0),
                 info.get("steps", 0))
    sets = load_problem_sets(base)  # every method gets the very same pool, validation and test problems
    for method in args.methods:
        cfg = dataclasses.replace(base, method=method, output_dir=str(out / method))
        t = time.perf_counter()
        log.info("── %s ──", method)
        Curriculum(cfg, sets).run()
        log.info("%s finished in %.0f s", method, time.perf_counter() - t)
    wall = time.perf_counter() - start
    table = report(out, notes=[f"Demo wall time: {wall:.0f} s on {os.cpu_count()} CPU cores.", ONE_SEED])
    print("\n" + table + "\n\n" + ONE_SEED)
    print(f"\nwall time {wall:.0f} s; plot {out / 'accuracy.png'}; summary {out / 'summary.md'}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """One-shot selection: score the whole pool once, write the top n and a per-problem scores table."""
    from .curriculum.oneshot import beside, select_once, write_selection
    out = Path(args.out)
    # work files (CROPI's offline stores) live beside the output, e.g. selected.work/offline/
    cfg = RunConfig.from_sources(args.config, {**overrides(args), "output_dir": str(beside(out, ".work"))})
    scores = Path(args.scores) if args.scores else beside(out, ".scores.csv")
    if out.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{out}: --out must end in .jsonl or .parquet")
    result = select_once(cfg, args.n)
    if not is_main_process():  # rank 0 writes the selection every rank agreed on
        return 0
    summary = write_selection(result, out, scores, cfg)
    chosen = [row for row in result.table if row["selected"]]
    mean_p = sum(row["pass_rate"] for row in chosen) / max(len(chosen), 1)
    print(f"{cfg.method}: selected {len(chosen)} of {len(result.table)} problems in {result.seconds:.0f} s "
          f"(mean pass rate {mean_p:.2f}; {summary['composition']})")
    print(f"subset {out}; scores {scores}; train on it with: gradalign run --pool {out} --method full ...")
    return 0


def cmd_rollouts(args: argparse.Namespace) -> int:
    """CROPI's offline rollouts: sample k completions per problem once from the behaviour policy, into a store."""
    from .curriculum.setup import load_user_set, make_reward
    from .curriculum.offline import collect_store
    from .policy.load import load_policy
    cfg = RunConfig.from_sources(args.config, {**overrides(args), "rollouts_per_problem": args.k})
    if not cfg.pool:
        raise ValueError("gradalign rollouts needs --pool FILE (the pool, or a validation set with --k 32)")
    problems = load_user_set(cfg, "pool")
    model, tokenizer = load_policy(cfg.model_args.model_name_or_path, cfg.device)
    start = time.perf_counter()
    store = collect_store(cfg, Path(args.out), model, tokenizer, problems, args.k, make_reward(cfg),
                          shard_size=args.shard_size)
    print(f"{len(store)} problems × {args.k} rollouts in {store.path} ({time.perf_counter() - start:.0f} s); "
          f"use it with: gradalign run --method cropi --offline-rollouts DIR (pool) / --offline-validation DIR")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reports import report
    if (Path(args.directory) / "bench.json").exists():  # a `gradalign bench regimes` directory
        from .reports.benchmark import bench_report, format_bench_table, load_bench
        path = bench_report(args.directory)
        print(format_bench_table(load_bench(args.directory)) + f"\n\nreport: {path} (and report.html)")
        return 0
    print(report(args.directory))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .selection import REGISTRY
    for name, method in REGISTRY.items():
        needs = ", ".join(sorted(method.needs)) or "pass rates only"
        print(f"{name:22s} {method.description}  [{needs}]")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks (benchmarks/README.md); each reports ratios measured side by side in one process."""
    from .bench import scoring
    return scoring.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradalign", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the adaptive curriculum with one method", epilog=TRL_FLAGS_HELP)
    run.add_argument("--config", help="YAML file of RunConfig fields and TRL's own fields; flags override it")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the default (gradalign-lfdr) and the published GradAlign vs random, AccGreedy "
                                          "and full-pool GRPO on the embedded default scenario, with the cost ledger",
                          epilog=TRL_FLAGS_HELP)
    demo.add_argument("--config", help="YAML file of RunConfig fields; flags override it")
    demo.add_argument("--methods", nargs="+", default=DEMO_METHODS, help="methods to compare")
    add_config_flags(demo, skip=("method",))
    demo.set_defaults(func=cmd_demo)

    sel = sub.add_parser("select", help="one-shot selection: score a pool once, write the top n and the scores",
                         epilog=TRL_FLAGS_HELP)
    sel.add_argument("--config", help="YAML file of RunConfig fields; flags override it")
    sel.add_argument("--n", "--num-problems", dest="n", type=int, required=True,
                     help="problems to keep (under torchrun write --num-problems: torchrun reads --n as its own)")
    sel.add_argument("--out", required=True, help="selected subset (.jsonl or .parquet)")
    sel.add_argument("--scores", help="per-problem scores CSV (default: OUT with .scores.csv; a .summary.json "
                     "with the config, timings and composition is written beside OUT)")
    add_config_flags(sel, skip=("output_dir", "rounds", "steps_per_round", "chunk_size", "selection_ratio",
                                "eval_samples"))
    sel.set_defaults(func=cmd_select)

    ro = sub.add_parser("rollouts", help="CROPI: sample rollouts once from the behaviour policy into a resumable store",
                        epilog=TRL_FLAGS_HELP)
    ro.add_argument("--config", help="YAML file of RunConfig fields; flags override it")
    ro.add_argument("--k", type=int, default=8, help="completions per problem (CROPI: 8 for the pool, 32 for "
                    "validation)")
    ro.add_argument("--out", required=True, help="store directory (rerun the same command to resume)")
    ro.add_argument("--shard-size", type=int, default=256, help="problems per shard (the unit of resume)")
    add_config_flags(ro, skip=("output_dir", "rollouts_per_problem"))
    ro.set_defaults(func=cmd_rollouts)

    rep = sub.add_parser("report", help="(re)write the table, plot and summary.md of a run or demo directory")
    rep.add_argument("directory")
    rep.set_defaults(func=cmd_report)

    methods = sub.add_parser("methods", help="list the selection methods")
    methods.set_defaults(func=cmd_methods)

    from .bench import add_scoring_arguments
    bench = sub.add_parser("bench", help="benchmarks: cost of the gradient signals (see benchmarks/README.md)")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    scoring = bench_sub.add_parser("scoring", help="per-problem gradient signals vs one forward+backward")
    add_scoring_arguments(scoring)
    scoring.set_defaults(func=cmd_bench)
    from .bench.fidelity import add_fidelity_parser
    from .bench.regimes import add_regimes_parser
    from .bench.scaling import add_scaling_parser
    from .bench.overhead import add_overhead_parser
    from .bench.subset import add_subset_parser
    from .bench.savings import add_savings_parser
    from .bench.separation import add_separation_parser
    add_fidelity_parser(bench_sub)  # `gradalign bench fidelity`: projected vs exact scores
    add_regimes_parser(bench_sub)  # `gradalign bench regimes`: methods × data regimes × seeds
    add_scaling_parser(bench_sub)  # `gradalign bench scaling`: one round with 1 and N processes
    add_overhead_parser(bench_sub)  # `gradalign bench overhead`: selection cost per round against training
    add_subset_parser(bench_sub)  # `gradalign bench subset`: score_parameters' cost and fidelity
    add_savings_parser(bench_sub)  # `gradalign bench savings`: fewer selection rollouts vs selection quality
    add_separation_parser(bench_sub)  # `gradalign bench separation`: round-0 scores, good vs bad, per method
    return parser


def parse_command_line(argv: list[str] | None) -> argparse.Namespace:
    """Our flags, then (for the commands that build a RunConfig) TRL's flags from what is left."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    renamed = renamed_flag(rest)
    if renamed:  # before TRL's parser, which would read `--model` as an abbreviation of several of its flags
        parser.error(renamed)
    if rest and args.command in TAKES_TRL_FLAGS:
        args.trl_flags, rest = trl_flags(rest, args.command)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    setup_logging(args.verbose)
    if launched_world_size() > 1 and args.func not in (cmd_run, cmd_select):
        print("gradalign: error: only 'run' and 'select' run on several processes; launch this command as one "
              "process", file=sys.stderr)
        return 2
    from .curriculum.round import EmptySelectionError, NoDirectionError
    from .data.problem import DataError, one_line
    try:
        return args.func(args)
    except (DataError, NoDirectionError, EmptySelectionError, ValueError) as e:
        # Bad input or config: one line, no traceback; whatever was already written stays valid.
        print(f"gradalign: error: {one_line(e)}", file=sys.stderr)
        return 2
    except PermissionError as e:  # a file or directory this user may not write (or read): one line naming it
        print(f"gradalign: error: {e.filename or one_line(e)}: permission denied", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradalign: interrupted; rerun the same command to resume from the last finished round",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
