"""Fidelity benchmark: how well projected gradient features reproduce exact GradAlign scores.

For each projection (`gradalign.gradients.projections`) and dimension d it compares, over the live
(non-zero-variance) candidates of one chunk,

  exact      s(x) = ⟨g(x), ĝ_V⟩ / (‖g(x)‖ + 1e-5): `OnePassGradients` cosines to the unit pooled validation
             gradient (the GradAlign default score);
  projected  cos(φ(x), φ_V) with φ(x) = `projector.features` and φ_V = `projector.project_flat(g_V)`: the same
             projection applied to the same pooled validation gradient (R is linear, so this equals the pooled,
             token-weighted sum of the validation problems' features);

by Spearman rank correlation (average ranks for ties) and top-10% overlap |top(proj) ∩ top(exact)| / |top|.
Zero-variance candidates are left out (the default selection excludes them; their score would be 0 in both).

Settings:
  round    a real round of the default scenario: the cached warm-started tiny policy, chunk 0 of the default
           `RunConfig()` pool (256 candidates, k_r = 8), the 64 validation problems (k_v = 8), rollouts from
           `RoundSelector.rollouts` with round 0's seeds, rewards from the exact-match verifier;
  random   a random-init Qwen2 (`--random-model`, default 10m: hidden 384, 6 layers, 6 heads, intermediate 1152,
           the character tokenizer) with fabricated rollouts (as `gradalign bench scoring` makes them):
           `--n-problems` candidates × `--k`, 64 validation problems × 8.

Projections ("kinds"):
  factored           LoGra Kronecker P_out G P_inᵀ per parameter, d split ∝ parameter size (the default)
  factored-energy    the same, d split ∝ each parameter's share of per-problem gradient energy, measured once
                     on the validation batch (exact, `projections.gradient_energy`, power 1)
  khatri-rao-energy  rank-one rows u_k ⊗ v_k per parameter (still from the factors, G never formed), energy split
  khatri-rao         the same with the size split
  sparse             CROPI: 10% of the coordinates, then a Gaussian JL map
  dense              a dense Rademacher map of the whole flat gradient (dense-gaussian: Gaussian)

Dense and sparse maps cost 2·n·d·P' multiply-adds plus d·P' random numbers (P' = coordinates read) per call;
rows whose estimated CPU time exceeds `--max-seconds` are reported as skipped instead of run.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..gradients.projections import VARIANTS
from . import csv_list, machine_info, publish

DIMS = [512, 2048, 8192, 32768]
KINDS = ["factored", "factored-energy", "khatri-rao-energy", "sparse", "sparse-countsketch", "dense"]
SETTINGS = ["round", "random"]
TARGET = {"dim": 8192, "spearman": 0.95, "top10": 0.90}  # the targets
CPU_GFLOPS = 50.0  # single-thread fp32 matmul throughput assumed by the cost estimate (measured ~50-80)
RNG_PER_SECOND = 150e6  # torch CPU random numbers per second (measured ~180M/s)
MAX_PROJECTION_MICRO_BATCH = 2048  # completions per forward for dense / sparse (fewer regenerations of R)


# ---------------------------------------------------------------------------------------------- metrics


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's `rankdata(method="average")`)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or xs[end] != xs[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks (nan when either side is constant)."""
    a, b = rankdata(x), rankdata(y)
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def top_overlap(projected, exact, fraction: float = 0.1) -> float:
    """|top(projected) ∩ top(exact)| / |top| for the top ⌈fraction·n⌉ of each (ties broken by position)."""
    n = len(exact)
    k = max(1, int(np.ceil(fraction * n)))
    top_p = set(np.argsort(-np.asarray(projected), kind="stable")[:k].tolist())
    top_e = set(np.argsort(-np.asarray(exact), kind="stable")[:k].tolist())
    return len(top_p & top_e) / k


# ---------------------------------------------------------------------------------------------- settings


@dataclass
class Case:
    """One setting: a model, candidate and validation batches, g_V and the exact scores."""

    name: str
    model: object
    batch: object  # SurrogateBatch of the candidates
    validation: object  # SurrogateBatch of the validation problems
    g_v: object  # flat pooled validation gradient (None without exact scores)
    exact: np.ndarray | None  # exact cosines of all candidates (None: not computed)
    live: np.ndarray  # bool: non-zero-variance candidates
    info: dict = field(default_factory=dict)
    shares: dict | None = None  # energy allocation weights (measured lazily)
    problems: list = field(default_factory=list)  # the candidates (a real round: their labels, e.g. corrupted)


def _exact_scores(case_name: str, model, batch, validation, micro_batch: int, info: dict, echo) -> tuple:
    from ..gradients import OnePassGradients
    from ..gradients.signals import unit
    backend = OnePassGradients(micro_batch=micro_batch)
    t = time.perf_counter()
    g_v = backend.pooled_gradient(model, validation)
    signals = backend.problem_signals(model, batch, unit(g_v).unsqueeze(0))
    info["exact_seconds"] = round(time.perf_counter() - t, 3)
    exact = signals.cosines(0).numpy().astype(np.float64)
    live = ~batch.rollouts.zero_variance()
    info.update(params=int(g_v.numel()), candidates=batch.num_problems, live=int(live.sum()),
                validation_problems=validation.num_problems,
                validation_live=int((~validation.rollouts.zero_variance()).sum()),
                exact_cos_mean=float(exact[live].mean()), exact_cos_std=float(exact[live].std()),
                tokens=int(batch.rollouts.group.numel() * batch.rollouts.seq_len))
    if echo:
        echo(f"[{case_name}] {info['params']:,d} parameters; {info['live']}/{info['candidates']} live candidates, "
             f"{info['validation_live']}/{info['validation_problems']} live validation problems; exact cosines "
             f"{info['exact_cos_mean']:+.3f} ± {info['exact_cos_std']:.3f} in {info['exact_seconds']:.1f} s")
    return g_v, exact, live


def round_case(micro_batch: int = 256, echo=None, cfg=None, exact: bool = True) -> Case:
    """Setting (i): a real selection round of the default scenario with the warm-started tiny policy (or of
    `cfg`'s scenario with its policy); `exact=False` leaves out the exact scores (g_v and exact stay None)."""
    from ..config import RunConfig
    from ..curriculum.setup import chunk_order, load_problem_sets, make_reward, round_seed
    from ..curriculum.round import RoundSelector
    from ..policy.load import load_policy
    cfg = cfg or RunConfig()
    t = time.perf_counter()
    model, tokenizer = load_policy(cfg.value("model_name_or_path"), cfg.device)  # tiny: the cached warm start
    model.eval()
    sets = load_problem_sets(cfg)
    selector = RoundSelector(cfg, sets.validation, make_reward(cfg))
    chunk = [sets.pool[i] for i in chunk_order(len(sets.pool), cfg.chunk_size, cfg.seed)[0]]
    seed = round_seed(cfg.seed, 0)
    info = {"setup_seconds": round(time.perf_counter() - t, 3)}
    t = time.perf_counter()
    cand = selector.rollouts(model, tokenizer, chunk, cfg.rollouts_per_problem, seed, "candidates")
    val = selector.rollouts(model, tokenizer, sets.validation, cfg.validation_rollouts, seed + 1, "validation")
    info["rollout_seconds"] = round(time.perf_counter() - t, 3)
    name = cfg.value("model_name_or_path")
    info.update(model="tiny (warm-started)" if name == "tiny" else name, scenario=cfg.scenario,
                k=cfg.rollouts_per_problem,
                k_validation=cfg.validation_rollouts, advantage_scale=cfg.advantage_scale, round=0)
    batch, validation = selector.batch(cand), selector.batch(val)
    if not exact:
        return Case("round", model, batch, validation, None, None, ~cand.zero_variance(), info, problems=chunk)
    g_v, scores, live = _exact_scores("round", model, batch, validation, micro_batch, info, echo)
    return Case("round", model, batch, validation, g_v, scores, live, info, problems=chunk)


def random_case(model_name: str = "10m", n_problems: int = 128, k: int = 4, n_validation: int = 64,
                k_validation: int = 8, seed: int = 0, micro_batch: int = 256, echo=None) -> Case:
    """Setting (ii): a random-init Qwen2 with fabricated rollouts (as `gradalign bench scoring`)."""
    from ..gradients.surrogate import SurrogateBatch
    from ..policy.tiny import build_tokenizer
    from .scoring import MODEL_CONFIGS, build_model, fabricate_rollouts
    t = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(model_name, tokenizer, seed).eval()
    cand = fabricate_rollouts(tokenizer, n_problems, k, seed=seed + 1)
    val = fabricate_rollouts(tokenizer, n_validation, k_validation, seed=seed + 2)
    info = {"setup_seconds": round(time.perf_counter() - t, 3), "rollout_seconds": 0.0,
            "model": f"{model_name} random init {MODEL_CONFIGS[model_name] or '(tiny defaults)'}", "k": k,
            "k_validation": k_validation, "advantage_scale": "none", "rollouts": "fabricated"}
    batch = SurrogateBatch(cand, cand.advantages("none"))
    validation = SurrogateBatch(val, val.advantages("none"))
    g_v, exact, live = _exact_scores("random", model, batch, validation, micro_batch, info, echo)
    return Case("random", model, batch, validation, g_v, exact, live, info)


# ---------------------------------------------------------------------------------------------- one row


def estimate(projector, case: Case) -> dict:
    """Estimated CPU cost of one dense / sparse features call (None for factored: always cheap)."""
    if projector.kind == "factored":
        return {}
    cost = projector.cost(case.model, int(case.live.sum()) + 1)  # + the flat g_V row
    materialise = 2.0 * case.info["tokens"] * case.info["params"] / 1e9
    gflop = cost["gflop"] + materialise
    return {"gflop": gflop, "random_entries": cost["random_entries"],
            "est_seconds": gflop / CPU_GFLOPS + cost["random_entries"] / RNG_PER_SECOND}


def make_projector(variant: str, dim: int, seed: int, case: Case, micro_batch: int):
    from ..gradients.projections import configured_projector, gradient_energy

    def measure_energy():  # once per case, timed
        if case.shares is None:
            t = time.perf_counter()
            case.shares = gradient_energy(case.model, case.validation, micro_batch=micro_batch)
            case.info["energy_seconds"] = round(time.perf_counter() - t, 3)
        return case.shares

    return configured_projector(variant, dim, seed, measure_energy)


def run_row(case: Case, variant: str, dim: int, seed: int, max_seconds: float, micro_batch: int) -> dict:
    import torch
    projector = make_projector(variant, dim, seed, case, micro_batch)
    row = {"setting": case.name, "kind": variant, "dim": dim, "seed": seed, "spearman": None, "top10": None,
           "seconds": None, "status": "ok", "live": int(case.live.sum()),
           "top_k": max(1, int(np.ceil(0.1 * case.live.sum())))}
    est = estimate(projector, case)
    row.update({k: round(v, 1) if isinstance(v, float) else v for k, v in est.items()})
    if est and est["est_seconds"] > max_seconds:
        row["status"] = (f"skipped (d×P too large for CPU: {est['gflop']:,.0f} GFLOP, ~{est['est_seconds']:.0f} s "
                         f"estimated > --max-seconds {max_seconds:g})")
        return row
    mb = micro_batch
    if projector.kind != "factored":  # one forward over (up to) all completions: R generated once, not per micro-batch
        mb = max(micro_batch, min(case.batch.rollouts.group.numel(), MAX_PROJECTION_MICRO_BATCH))
    t = time.perf_counter()
    feats, phi_v = projector.features_and_flat(case.model, case.batch, case.g_v, micro_batch=mb)
    row["seconds"] = round(time.perf_counter() - t, 3)
    feats, phi_v = feats.double(), phi_v.double()
    cos = (feats @ phi_v / (feats.norm(dim=1) * phi_v.norm()).clamp(min=torch.finfo(torch.float64).tiny)).numpy()
    proj, exact = cos[case.live], case.exact[case.live]
    row["spearman"] = round(spearman(proj, exact), 4)
    row["top10"] = round(top_overlap(proj, exact, 0.1), 4)
    row["micro_batch"] = mb
    meta = projector.metadata()
    row["projector"] = {k: v for k, v in meta.items() if k not in ("shares",)}
    if dim == TARGET["dim"]:
        row["meets_target"] = bool(row["spearman"] >= TARGET["spearman"] and row["top10"] >= TARGET["top10"])
    return row


# ---------------------------------------------------------------------------------------------- report


def format_table(rows: list[dict]) -> str:
    head = f"{'setting':8s} {'kind':18s} {'dim':>6s} {'Spearman':>9s} {'top-10%':>8s} {'seconds':>8s}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        sp = f"{r['spearman']:9.4f}" if r["spearman"] is not None else f"{'-':>9s}"
        top = f"{r['top10']:8.3f}" if r["top10"] is not None else f"{'-':>8s}"
        sec = f"{r['seconds']:8.2f}" if r["seconds"] is not None else f"{'-':>8s}"
        status = "" if r["status"] == "ok" else r["status"]
        if r.get("meets_target") is False:
            status = (status + " below target").strip()
        lines.append(f"{r['setting']:8s} {r['kind']:18s} {r['dim']:6d} {sp} {top} {sec}  {status}".rstrip())
    return "\n".join(lines)


def run_fidelity(settings: list[str] = SETTINGS, dims: list[int] = DIMS, kinds: list[str] = KINDS, seed: int = 0,
                 out: str | None = "benchmarks/results/fidelity.json", max_seconds: float = 45.0,
                 random_model: str = "10m", n_problems: int = 128, k: int = 4, micro_batch: int = 256,
                 threads: int | None = 1, echo: Callable[[str], None] | None = print) -> dict:
    """Run the benchmark; write the JSON to `out` (atomically, if given) and return it."""
    import torch

    unknown = [s for s in settings if s not in SETTINGS] + [v for v in kinds if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown fidelity setting/kind {unknown[0]!r} (settings: {', '.join(SETTINGS)}; "
                         f"kinds: {', '.join(VARIANTS)})")
    if any(d < 1 for d in dims) or n_problems < 1 or k < 2:
        raise ValueError("--dims must be >= 1, --n-problems >= 1 and --k >= 2")
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    rows, cases = [], {}
    for name in settings:
        t = time.perf_counter()
        case = (round_case(micro_batch, echo) if name == "round" else
                random_case(random_model, n_problems, k, seed=0, micro_batch=micro_batch, echo=echo))
        got = []
        for variant in kinds:
            for dim in dims:
                got.append(run_row(case, variant, dim, seed, max_seconds, micro_batch))
                if echo:
                    echo(format_table(got[-1:]).split("\n", 2)[2])
        rows += got
        case.info["total_seconds"] = round(time.perf_counter() - t, 3)
        cases[name] = case.info
        del case
    wall = time.perf_counter() - start
    result = {
        "benchmark": "fidelity",
        "machine": machine_info(),
        "settings": {"settings": settings, "dims": dims, "kinds": kinds, "seed": seed, "max_seconds": max_seconds,
                     "random_model": random_model, "n_problems": n_problems, "k": k, "micro_batch": micro_batch,
                     "variants": {v: {"kind": VARIANTS[v][0], **VARIANTS[v][1]} for v in kinds},
                     "metric": "over live (non-zero-variance) candidates: Spearman (average ranks) and top-10% "
                               "overlap of cos(φ(x), φ_V) against exact OnePassGradients cosines to ĝ_V (pooled)",
                     "cost_model": {"cpu_gflops": CPU_GFLOPS, "rng_per_second": RNG_PER_SECOND}},
        "target": TARGET,
        "cases": cases,
        "rows": rows,
        "wall_seconds": round(wall, 1),
    }
    return publish(result, format_table(rows), f"target at d = {TARGET['dim']}: Spearman >= {TARGET['spearman']}, "
                   f"top-10% overlap >= {TARGET['top10']}; wall time {wall:.0f} s", out, echo)


# ---------------------------------------------------------------------------------------------- command line


def add_fidelity_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gradalign bench fidelity` / `python benchmarks/fidelity.py`."""
    parser.add_argument("--settings", type=csv_list(), default=list(SETTINGS),
                        help="comma-separated: round (warm-started tiny policy, default scenario), random "
                             "(random-init --random-model, fabricated rollouts) (default: round,random)")
    parser.add_argument("--dims", type=csv_list(int), default=list(DIMS),
                        help="comma-separated projection dimensions (default: 512,2048,8192,32768)")
    parser.add_argument("--kinds", type=csv_list(), default=list(KINDS),
                        help=f"comma-separated projections among {', '.join(VARIANTS)} (default: {','.join(KINDS)})")
    parser.add_argument("--seed", type=int, default=0, help="projection seed (default: 0)")
    parser.add_argument("--max-seconds", type=float, default=45.0,
                        help="skip dense / sparse rows whose estimated CPU time exceeds this (default: 45)")
    parser.add_argument("--random-model", default="10m", help="model of the random setting: tiny or 10m (default: 10m)")
    parser.add_argument("--n-problems", type=int, default=128, help="random setting: candidates (default: 128)")
    parser.add_argument("--k", type=int, default=4, help="random setting: completions per candidate (default: 4)")
    parser.add_argument("--micro-batch", type=int, default=256, help="completions per forward (default: 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", default="benchmarks/results/fidelity.json", help="JSON results file")


def run_from_args(args: argparse.Namespace) -> int:
    run_fidelity(args.settings, args.dims, args.kinds, seed=args.seed, out=args.out, max_seconds=args.max_seconds,
                 random_model=args.random_model, n_problems=args.n_problems, k=args.k, micro_batch=args.micro_batch,
                 threads=args.threads)
    return 0


def cmd_bench_fidelity(args: argparse.Namespace) -> int:
    """`gradalign bench fidelity`."""
    return run_from_args(args)


def add_fidelity_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `fidelity` subcommand to `gradalign bench`'s subparsers."""
    parser = subparsers.add_parser("fidelity", help="projected vs exact gradient scores: Spearman and top-10%% overlap")
    add_fidelity_arguments(parser)
    parser.set_defaults(func=cmd_bench_fidelity)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/fidelity.py", description=__doc__.splitlines()[0])
    add_fidelity_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
