"""Benchmarks run by `gradalign bench ...` (and by the scripts in `benchmarks/`).

Argument definitions live here, free of heavy imports, so that building the CLI parser stays fast; the
benchmarks themselves (which import torch and transformers) are imported only when one runs.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Callable

from ..provenance import running_code


def machine_info(device=None) -> dict:
    """What the figures were measured on (recorded in every benchmark's JSON)."""
    import torch
    import transformers
    info = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "code": running_code()}
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info


def publish(result: dict, table: str, footer: str, out: str | None, echo: Callable[[str], None] | None) -> dict:
    """Print a benchmark's table and footer, and write its JSON (atomically) to `out` if given."""
    from ..fileio import write_json
    if echo:
        echo("\n" + table)
        echo("\n" + footer)
    if out:
        write_json(out, result)
        if echo:
            echo(f"wrote {out}")
    return result


def plus_minus(stats) -> str:
    """"mean ± std" of a (mean, std, ...) tuple, or "—" where there is none."""
    return "—" if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f}"


def csv_list(kind=str):
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(t) for t in items]
    return parse


def run_default(name: str):
    """A RunConfig field's default: the benchmarks measure what a run would use."""
    from ..config import RunConfig
    return RunConfig.__dataclass_fields__[name].default


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gradalign bench scoring` / `python benchmarks/scoring.py`."""
    parser.add_argument("--models", type=csv_list(), default=["tiny", "10m"],
                        help="comma-separated models: tiny, 10m (built from a seed), smollm2-135m (built in); "
                             "NAME+loraR also times a rank-R LoRA copy of NAME, e.g. tiny+lora16 (default: tiny,10m)")
    parser.add_argument("--chunks", type=csv_list(int), default=[64, 256, 1024],
                        help="comma-separated numbers of problems scored at once (default: 64,256,1024)")
    parser.add_argument("--k", type=int, default=8, help="completions per problem (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default: 3)")
    parser.add_argument("--backends", type=csv_list(), default=["naive", "func", "onepass", "onepass-z"],
                        help="comma-separated per-problem backends to time next to the floor: naive, func, onepass, "
                             "onepass-z (per-completion terms, what gradalign-z scores with), forward (the same terms "
                             "by forward mode with prompts shared: what the default scores with), forward-floor (the "
                             "floor with prompts shared: the validation direction), learnalign (LearnAlign's "
                             "features, warm-up excluded), onepass-zcos (terms and "
                             "norms: gradalign-zcos), and projected features "
                             "proj-factored, proj-khatri-rao, proj-sparse, proj-sparse-countsketch, proj-dense "
                             "(default: naive,func,onepass,onepass-z)")
    parser.add_argument("--proj-dim", type=int, default=run_default("projection_dim"),
                        help=f"feature dimension of the proj-* rows (default: {run_default('projection_dim')}, "
                             f"RunConfig's projection_dim)")
    parser.add_argument("--prompt-tokens", type=csv_list(int), default=[6, 8], metavar="LO,HI",
                        help="prompt lengths of the fabricated rollouts, BOS included, drawn uniformly (default: 6,8, "
                             "the character policy's; chat-templated questions to SmolLM2 run ~100)")
    parser.add_argument("--completion-tokens", type=csv_list(int), default=[3, 6], metavar="LO,HI",
                        help="completion lengths of the fabricated rollouts, EOS included (default: 3,6)")
    parser.add_argument("--max-naive-chunk", type=int, default=256,
                        help="skip the (slow) naive backend on chunks larger than this (default: 256)")
    parser.add_argument("--out", default="benchmarks/results/scoring.json", help="JSON results file")
    parser.add_argument("--micro-batch", type=int, default=run_default("micro_batch"),
                        help=f"completions per forward/backward, the same for every method (default: "
                             f"{run_default('micro_batch')}, RunConfig's micro_batch)")
    parser.add_argument("--memory", choices=["auto", "all", "cheap", "none"], default="auto",
                        help="peak-memory measurement: all methods, only floor and onepass ('cheap'), none, or "
                             "'auto' (all while it costs < 2x the timing, else cheap) (default: auto)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available) (default: auto)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and fabricated rollouts")
