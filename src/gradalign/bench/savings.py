"""Savings benchmark: fewer selection rollouts at the same selection quality?

For every (regime, seed) it takes the warm-started tiny policy and the first chunk of the regime's pool (a round-0
selection, no training) and selects with each method under each rollout-saving variant, all from the same policy:

  exact        today's round: k_r completions per candidate, k_v per validation problem, the whole validation set;
  seq-K0       sequential sampling (`sequential_rollouts: K0`): K0 completions first, the rest only where they
               disagree;
  k_r=K        fewer completions per candidate for everything (the naive saving, for comparison);
  k_v=K        fewer completions per validation problem;
  val=N        the first N validation problems only.

Per variant it reports the completions generated for selection (candidates + validation, from the selection's cost
ledger) as a multiple of exact's, and the selection's quality against the regime's labels (the round record's
diagnostics: AUC of the scores, good vs bad, over the eligible candidates; the good share of the top-k and of the
selection), mean ± std over seeds. A saving is worth its name when its quality stays within the seed spread of
exact's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from . import csv_list, machine_info, plus_minus, publish

REGIMES = ("unreliable-rewards", "imbalance", "low-utility")
LABEL = {"unreliable-rewards": "corrupted", "imbalance": "target", "low-utility": "utility"}
DEFAULT_VARIANTS = ("exact", "seq-4", "seq-2", "k_r=4", "k_v=4", "k_v=2", "val=32", "val=16")
QUALITY = ("auc", "top_good_share", "selected_good_share")


def variant_fields(name: str) -> tuple[dict, int | None]:
    """(RunConfig fields, validation problems kept or None) of a variant name."""
    if name == "exact":
        return {}, None
    kind, _, value = name.partition("-") if name.startswith("seq-") else name.partition("=")
    if not value.isdigit():
        raise ValueError(f"bench savings: unknown variant '{name}' (e.g. exact, seq-4, k_r=4, k_v=4, val=32)")
    n = int(value)
    if kind == "seq":
        return {"sequential_rollouts": n}, None
    if kind == "k_r":
        return {"rollouts_per_problem": n}, None
    if kind == "k_v":
        return {"validation_rollouts": n}, None
    if kind == "val":
        return {}, n
    raise ValueError(f"bench savings: unknown variant '{name}' (e.g. exact, seq-4, k_r=4, k_v=4, val=32)")


def select_once(cfg, sets, model, tokenizer, n_validation: int | None) -> dict:
    """One round-0 selection of the pool's first chunk: its selection cost, diagnostics, and what they were computed
    from (the eligible candidates' scores and, per label, which of them are good)."""
    from ..curriculum.round import RoundSelector
    from ..curriculum.setup import chunk_order, make_reward, round_seed
    from ..selection.diagnostics import good_labels, selection_diagnostics
    validation = sets.validation[:n_validation] if n_validation else sets.validation
    selector = RoundSelector(cfg, validation, make_reward(cfg))
    chunk = [sets.pool[i] for i in chunk_order(len(sets.pool), cfg.chunk_size, cfg.seed)[0]]
    sel = selector.select(model, tokenizer, chunk, round_seed(cfg.seed, 0))
    c = sel.candidates
    validation_sources = {p.source for p in sets.validation}
    diagnostics = selection_diagnostics(chunk, c.pass_rate, c.completion_length, sel.scores, sel.eligible,
                                        sel.selected, validation_sources)
    eligible = np.asarray(sel.eligible, dtype=bool)
    generated = sel.ledger.generated
    return {"completions": generated["candidates"]["completions"] + generated["validation"]["completions"],
            "labels": diagnostics["labels"], "scores": np.asarray(sel.scores, dtype=float)[eligible],
            "good": {label: good[eligible] for label, good in good_labels(chunk, validation_sources).items()}}


def run_savings(regimes: list[str], methods: list[str], variants: list[str], seeds: list[int],
                out: str | None = "benchmarks/results/savings.json", threads: int | None = 1,
                echo: Callable[[str], None] | None = print) -> dict:
    import torch
    from ..config import RunConfig
    from ..curriculum.setup import load_problem_sets
    from ..policy.warmstart import warm_started_tiny
    if threads is not None:
        torch.set_num_threads(threads)
    unknown = next((r for r in regimes if r not in REGIMES), None)
    if unknown:
        raise ValueError(f"bench savings: unknown regime '{unknown}' (choose from: {', '.join(REGIMES)})")
    for v in variants:
        fields, _ = variant_fields(v)
        RunConfig.of(**fields)  # a bad value is one line before anything runs
    model, tokenizer = warm_started_tiny()
    cells: list[dict] = []
    for regime in regimes:
        for seed in seeds:
            base = RunConfig.of(scenario=regime, seed=seed)
            sets = load_problem_sets(base)
            for method in methods:
                for variant in variants:
                    fields, n_validation = variant_fields(variant)
                    cfg = dataclasses.replace(base, method=method, **fields)
                    result = select_once(cfg, sets, model, tokenizer, n_validation)
                    cells.append({"regime": regime, "seed": seed, "method": method, "variant": variant,
                                  "completions": result["completions"],
                                  **{q: result["labels"][LABEL[regime]][q] for q in QUALITY}})
                    if echo:
                        echo(f"{regime} / seed {seed} / {method} / {variant}: {result['completions']} completions, "
                             f"AUC {_fmt(cells[-1]['auc'])}, top-k good {_fmt(cells[-1]['top_good_share'])}")
    rows = summarise(cells)
    result = {"benchmark": "savings", "machine": machine_info(torch.device("cpu")),
              "settings": {"regimes": regimes, "methods": methods, "variants": variants, "seeds": seeds,
                           "policy": "warm-started tiny, round 0 (no training)", "chunk": base.chunk_size,
                           "k_r": base.rollouts_per_problem, "k_v": base.validation_rollouts},
              "cells": cells, "rows": rows}
    return publish(result, format_table(rows), "completions: candidates + validation sampled for the selection, as a "
                   "multiple of exact's; quality: mean ± std over seeds of the label's AUC (eligible candidates), "
                   "good share of the top-k and of the selection", out, echo)


def summarise(cells: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (regime, method, variant); completions relative to exact's of the same seed."""
    rows = []
    keys = dict.fromkeys((c["regime"], c["method"], c["variant"]) for c in cells)
    exact = {(c["regime"], c["method"], c["seed"]): c["completions"] for c in cells if c["variant"] == "exact"}
    for regime, method, variant in keys:
        mine = [c for c in cells if (c["regime"], c["method"], c["variant"]) == (regime, method, variant)]
        ratio = [c["completions"] / exact[regime, method, c["seed"]] for c in mine
                 if exact.get((regime, method, c["seed"]))]
        row = {"regime": regime, "method": method, "variant": variant, "seeds": len(mine),
               "completions": float(np.mean([c["completions"] for c in mine])),
               "x_exact": _stats(ratio)}
        for q in QUALITY:
            row[q] = _stats([c[q] for c in mine if c[q] is not None])
        rows.append(row)
    return rows


def _stats(xs: list[float]) -> tuple[float, float] | None:
    if not xs:
        return None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def format_table(rows: list[dict]) -> str:
    head = (f"{'regime':19s} {'method':12s} {'variant':8s} {'completions':>11s} {'x exact':>12s} {'AUC':>12s} "
            f"{'top-k good':>12s} {'selected good':>13s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['regime']:19s} {r['method']:12s} {r['variant']:8s} {r['completions']:11.0f} "
                     f"{plus_minus(r['x_exact']):>12s} {plus_minus(r['auc']):>12s} "
                     f"{plus_minus(r['top_good_share']):>12s} {plus_minus(r['selected_good_share']):>13s}")
    return "\n".join(lines)


def add_savings_parser(sub) -> None:
    p = sub.add_parser("savings", help="fewer selection rollouts (sequential sampling, fewer validation "
                                       "completions) against selection quality, round 0, several seeds")
    p.add_argument("--regimes", type=csv_list(), default=list(REGIMES),
                   help=f"comma-separated regimes (default: {','.join(REGIMES)})")
    p.add_argument("--methods", type=csv_list(), default=["gradalign", "gradalign-z"],
                   help="comma-separated methods (default: gradalign,gradalign-z)")
    p.add_argument("--variants", type=csv_list(), default=list(DEFAULT_VARIANTS),
                   help=f"comma-separated variants (default: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--seeds", type=int, default=5, help="seeds per regime (default: 5)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+N-1 (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--out", default="benchmarks/results/savings.json", help="JSON results file")
    p.set_defaults(func=lambda args: run_savings(args.regimes, args.methods, args.variants,
                                                 list(range(args.first_seed, args.first_seed + args.seeds)),
                                                 args.out, args.threads) and 0)

