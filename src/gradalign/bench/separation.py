"""Separation benchmark: how well each method's round-0 scores tell good candidates from bad, on the same rollouts.

For every (scenario, seed) it takes the starting policy and the first chunk of the scenario's pool, samples the
candidates' and the validation set's rollouts once, computes every gradient signal the methods need once (one
scoring pass), and then scores that very chunk with each method: the differences between methods are the rules'
alone, not the sampling's. Per method and label (selection/diagnostics.py: corrupted, target, utility) it reports
the AUC of the scores, good against bad among the eligible candidates, and the good share of the top k (k = the
round's keep), mean ± std over seeds. No training: a cell costs one round's rollouts and scoring, so the same
question can be asked of a real model (`--preset smollm2`) over several seeds.

Each cell is written to OUT/cells/<scenario>-seed-<s>.json (with the candidates' signals, labels and completion
texts in a .npz beside it, to try other rules on later) as soon as it is done; a rerun skips finished cells.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import csv_list, machine_info, plus_minus, publish

# The starting policies and round sizes. tiny: the demo's round on the warm-started tiny policy. smollm2: one round
# of SmolLM2-135M-Instruct on the arithmetic mix it half-solves (gsm-symbolic with no word problems: single-digit,
# basic_arithmetic, chain_sum, countdown; half the pool coin flips), short answers, k = 8 so clean problems vary.
PRESETS: dict[str, dict] = {
    "tiny": {},
    "smollm2": dict(model_name_or_path="smollm2-135m", verifier="task", gsm_share=0.0, pool_size=64,
                    validation_size=32, test_size=8, chunk_size=64, selection_ratio=4, rollouts_per_problem=8,
                    validation_rollouts=8, max_completion_length=16, micro_batch=32, rollout_batch=64),
}
DEFAULT_SCENARIOS = {"tiny": ["unreliable-rewards", "imbalance", "low-utility", "mixed"], "smollm2": ["gsm-symbolic"]}
DEFAULT_METHODS = ["gradalign-lfdr", "gradalign", "gradalign-z", "gradalign-dot", "accgreedy", "passrate-band"]
SIGNALS = {"gradients", "validation", "completions", "norms", "self"}  # what one scoring pass can give every method
QUALITY = ("auc", "top_good_share")


def signal_method(methods: list[str]):
    """A method whose needs are every listed method's, so that one selection computes all their signals. The
    cosine needs norms, which per-completion terms alone do not give: they are asked for whenever some method
    reads cosines or norms."""
    from ..selection import get_method
    found = [get_method(m) for m in methods]
    unsupported = next((m for m in found if m.needs - SIGNALS or not m.reads_rollouts), None)
    if unsupported is not None:
        raise ValueError(f"bench separation: method '{unsupported.name}' scores "
                         f"{', '.join(sorted(unsupported.needs - SIGNALS)) or 'no rollouts'}; this benchmark scores "
                         f"one round's gradient signals and pass rates (e.g. {', '.join(DEFAULT_METHODS)})")
    needs = frozenset().union(*(m.needs for m in found))
    if any("gradients" in m.needs and ("completions" not in m.needs or "norms" in m.needs) for m in found):
        needs |= {"norms"}
    # every signal, always: no early decision (`Method.decide_early`) may skip the gradients the others read
    return dataclasses.replace(found[0], name="separation-signals", needs=needs, decide_early=None)


def measure_cell(cfg, methods: list[str]) -> tuple[dict, dict]:
    """One round-0 selection of the pool's first chunk with every method's signals, scored by each method:
    ({method: diagnostics labels}, arrays to save)."""
    from ..curriculum.round import RoundSelector
    from ..curriculum.setup import chunk_order, load_problem_sets, make_reward, round_seed
    from ..policy.load import load_policy
    from ..selection import SelectionOptions, get_method, select
    from ..selection.diagnostics import good_labels, selection_diagnostics
    sets = load_problem_sets(cfg)
    model, tokenizer = load_policy(cfg.model_args.model_name_or_path, cfg.device)
    selector = RoundSelector(cfg, sets.validation, make_reward(cfg))
    selector.method = signal_method(methods)
    chunk = [sets.pool[i] for i in chunk_order(len(sets.pool), cfg.chunk_size, cfg.seed)[0]]
    seed = round_seed(cfg.seed, 0)
    t = time.perf_counter()
    result = selector.select(model, tokenizer, chunk, seed)
    c = result.candidates
    validation_sources = {p.source for p in sets.validation}
    per_method = {}
    for name in methods:
        scored = get_method(name).score(c, SelectionOptions(zero_variance=cfg.zero_variance,
                                                            passrate_band=tuple(cfg.passrate_band), keep=cfg.keep))
        chosen = select(scored, cfg.keep, np.random.default_rng(seed))
        per_method[name] = selection_diagnostics(chunk, c.pass_rate, c.completion_length, scored.scores,
                                                 scored.eligible, chosen, validation_sources)["labels"]
    arrays = {field: np.asarray(value) for field, value in dataclasses.asdict(c).items()
              if value is not None and field != "ids"}
    arrays.update({f"good_{label}": good for label, good in good_labels(chunk, validation_sources).items()})
    arrays.update(ids=np.array(c.ids), source=np.array([p.source for p in chunk]))  # e.g. pass rates per task
    if result.rollouts is not None:  # the texts, so that rules reading answers can be tried on the cell later
        arrays.update(completions=np.array(result.rollouts.completions), completion_group=result.rollouts.group.numpy())
    cell = {"scenario": cfg.scenario, "seed": cfg.seed, "model": cfg.model_args.model_name_or_path,
            "candidates": len(chunk), "eligible": int((~c.zero_variance).sum()), "keep": cfg.keep,
            "seconds": round(time.perf_counter() - t, 1), "timings": result.timings,
            "generated": result.ledger.generated, "methods": per_method}
    return cell, arrays


def run_separation(scenarios: list[str], methods: list[str], seeds: list[int], preset: str = "tiny",
                   overrides: dict | None = None, out: str = "runs/separation", threads: int | None = 1,
                   echo: Callable[[str], None] | None = print) -> dict:
    import torch
    from .. import fileio
    from ..config import RunConfig
    if threads is not None:
        torch.set_num_threads(threads)
    signal_method(methods)  # an unsupported method is one line before anything runs
    base = {**PRESETS[preset], **(overrides or {})}
    configs = [RunConfig.of(**{**base, "scenario": s, "seed": seed, "method": methods[0]})  # nothing is written there
               for s in scenarios for seed in seeds]
    cells = []
    for cfg in configs:
        path = Path(out) / "cells" / f"{cfg.scenario}-seed-{cfg.seed}.json"
        if path.exists():
            cells.append(fileio.read_json(path))
            continue
        if echo:
            echo(f"{cfg.scenario} / seed {cfg.seed}: sampling and scoring {cfg.chunk_size} candidates "
                 f"({cfg.model_args.model_name_or_path}) ...")
        cell, arrays = measure_cell(cfg, methods)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path.with_suffix(".npz"), **arrays)
        fileio.write_json(path, cell)  # last: a cell counts as done only once both are written
        cells.append(cell)
        if echo:
            echo(f"{cfg.scenario} / seed {cfg.seed}: {cell['eligible']} of {cell['candidates']} eligible, "
                 f"{cell['seconds']:.0f} s; " + "; ".join(
                     f"{m} {_fmt(next(iter(cell['methods'][m].values()), {}).get('top_good_share'))}"
                     for m in methods))
    rows = summarise(cells, methods)
    result = {"benchmark": "separation", "machine": machine_info(torch.device("cpu")),
              "settings": {"preset": preset, "config": base, "scenarios": scenarios, "methods": methods,
                           "seeds": seeds, "policy": "the starting policy, round 0 (no training)"},
              "cells": cells, "rows": rows}
    return publish(result, format_table(rows), "per label among the eligible candidates: AUC of the scores (good vs "
                   "bad) and good share of the top k, mean ± std over seeds (n: seeds with both good and bad)",
                   str(Path(out) / "separation.json"), echo)


def summarise(cells: list[dict], methods: list[str]) -> list[dict]:
    """Mean ± std over seeds per (scenario, label, method)."""
    rows = []
    for scenario in dict.fromkeys(c["scenario"] for c in cells):
        mine = [c for c in cells if c["scenario"] == scenario]
        labels = dict.fromkeys(label for c in mine for label in next(iter(c["methods"].values()), {}))
        for label in labels:
            for method in methods:
                found = [c["methods"][method][label] for c in mine if label in c["methods"].get(method, {})]
                row = {"scenario": scenario, "label": label, "method": method,
                       "eligible_good_share": _stats([f["eligible_good_share"] for f in found])}
                for q in QUALITY:
                    row[q] = _stats([f[q] for f in found])
                rows.append(row)
    return rows


def _stats(xs: list) -> tuple[float, float, int] | None:
    """(mean, std, n) over the seeds that have the figure; None where none has it (JSON has no NaN)."""
    from ..reports.bench_stats import seed_stats
    stats = seed_stats(xs)
    return stats if stats[2] else None


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def format_table(rows: list[dict]) -> str:
    head = (f"{'scenario':19s} {'label':9s} {'method':16s} {'eligible good':>13s} {'AUC':>12s} {'top-k good':>12s} "
            f"{'n':>3s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        n = (r["top_good_share"] or r["auc"] or (0, 0, 0))[2]
        lines.append(f"{r['scenario']:19s} {r['label']:9s} {r['method']:16s} "
                     f"{plus_minus(r['eligible_good_share']):>13s} {plus_minus(r['auc']):>12s} "
                     f"{plus_minus(r['top_good_share']):>12s} {n:3d}")
    return "\n".join(lines)


def add_separation_parser(sub) -> None:
    p = sub.add_parser("separation", help="round 0, several seeds: how each method's scores separate good "
                                          "candidates from bad (AUC, top-k good share) on the same rollouts")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny",
                   help="tiny: the demo's round on the warm-started tiny policy (seconds per cell); smollm2: one "
                        "round of SmolLM2-135M-Instruct on its arithmetic mix with coin flips (about 10 minutes "
                        "and 10 GiB per cell on 2 CPU cores) (default: tiny)")
    p.add_argument("--scenarios", type=csv_list(), default=None,
                   help="comma-separated scenarios (default: tiny "
                        f"{','.join(DEFAULT_SCENARIOS['tiny'])}; smollm2 {','.join(DEFAULT_SCENARIOS['smollm2'])})")
    p.add_argument("--methods", type=csv_list(), default=DEFAULT_METHODS,
                   help=f"comma-separated methods scored on the same signals (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--seeds", type=int, default=5, help="seeds per scenario (default: 5)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+N-1 (default: 0)")
    p.add_argument("--config", help="YAML of RunConfig fields over the preset (sizes, model, scenario knobs)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--out", default="runs/separation", help="output directory (rerun to resume)")

    def run(args) -> int:
        from ..config import RunConfig
        overrides = RunConfig.yaml_values(args.config) if args.config else {}
        unknown = next((k for k in overrides if k in ("scenario", "seed", "method")), None)
        if unknown:
            raise ValueError(f"bench separation: {args.config}: '{unknown}' is set per cell (use --scenarios, "
                             f"--seeds, --methods)")
        scenarios = args.scenarios or DEFAULT_SCENARIOS[args.preset]
        run_separation(scenarios, args.methods, list(range(args.first_seed, args.first_seed + args.seeds)),
                       args.preset, overrides, args.out, args.threads)
        return 0

    p.set_defaults(func=run)
