"""Scoring benchmark: what exact per-problem gradient signals cost, as a multiple of one forward+backward.

For each model size and chunk of n problems × k completions (fabricated rollouts: no generation, so only
scoring is timed) it measures, side by side in one process and interleaved within each repeat:

  floor    one micro-batched forward+backward of the summed surrogate (`GradientBackend.combined_gradient`
           with weights 1): what a training step on these completions costs, the lower bound for exact signals;
  naive    `NaiveGradients`' loop, one backward per problem (the reference; skipped on big chunks), with its
           norm and dots reduced in float64 (fp32 sums of 10^6 terms drift by ~1e-4);
  func     `FuncGradients.problem_signals` (torch.func vmap of per-problem gradients);
  onepass  `OnePassGradients.problem_signals` (the exact one-pass scorer: what GradAlign's cosine needs);
  onepass-z  the same pass keeping every completion's term of the dot instead of the norms (`per_completion=True,
           with_norms=False`): what `gradalign-z` needs. Its ratio to `onepass` is the method's extra cost;
  onepass-zcos  both (per-completion terms and norms): what `gradalign-zcos` needs.

Each per-problem method scores against one direction (the unit pooled gradient of the chunk, like g_V) and
its norms and dots are checked against naive's: a speed number for wrong signals would be useless.

Peak memory. CPU: each method runs once more in a forked child process (a fresh process per model, chunk
and method that shares the already-built model and rollouts copy-on-write, so it costs no re-import). The
child warms the method up on 2 problems, frees what it can (gc, malloc_trim), resets the kernel's peak-RSS
mark (`/proc/self/clear_refs` = 5, Linux), takes `ru_maxrss` as the baseline right before the call and
reports `ru_maxrss` after it minus that baseline: the growth of resident memory during the call. Where the
mark cannot be reset, the baseline is the child's inherited high-water mark and the number is a lower bound
(the JSON says which). tracemalloc is useless here: it does not see torch's allocator. CUDA: in-process
`torch.cuda.max_memory_allocated()` minus `memory_allocated()` before the call.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..gradients.onepass import OnePassGradients
from ..gradients.persample import FuncGradients
from ..gradients.signals import GradientBackend, NaiveGradients, ProblemSignals, unit
from ..gradients.surrogate import SurrogateBatch
from ..policy.rollouts import Rollouts, pad
from ..policy.tiny import ALPHABET, SPECIAL, build_tiny_model, build_tokenizer
from . import add_scoring_arguments, machine_info, publish

# Model sizes built from a seed with the character tokenizer. "tiny" is the project's default policy.
MODEL_CONFIGS: dict[str, dict] = {
    "tiny": {},
    "10m": dict(hidden=384, layers=6, heads=6, intermediate=1152),
}
METHODS = ("floor", "naive", "func", "onepass", "onepass-z", "onepass-zcos")
PROJECTION_ROWS = ("proj-factored", "proj-khatri-rao", "proj-sparse", "proj-dense")  # projected features at --proj-dim
PROMPT_CHARS = (5, 7)  # + BOS: prompts of 6-8 tokens (~7)
COMPLETION_TOKENS = (3, 6)  # including the final EOS
ZERO_VARIANCE_FRACTION = 0.1  # a few all-equal groups, as real rollouts have; most carry signal


# ---------------------------------------------------------------------------------------------- inputs


def build_model(name: str, tokenizer, seed: int):
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown benchmark model '{name}' (choose from: {', '.join(MODEL_CONFIGS)})")
    return build_tiny_model(tokenizer, seed=seed, **MODEL_CONFIGS[name])


def fabricate_rollouts(tokenizer, n: int, k: int, seed: int) -> Rollouts:
    """n problems × k completions of random alphabet tokens, left-padded prompts, right-padded completions.

    Rewards are random bits; about 90% of groups are forced to contain both values (non-zero variance).
    """
    gen = torch.Generator().manual_seed(seed)
    first = len(SPECIAL)
    alphabet_ids = torch.arange(first, first + len(ALPHABET))

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    def chars(m: int) -> list[int]:
        return alphabet_ids[torch.randint(len(alphabet_ids), (m,), generator=gen)].tolist()

    prompts, completions, group, rewards = [], [], [], []
    for i in range(n):
        prompt = [tokenizer.bos_token_id] + chars(draw(*PROMPT_CHARS))
        r = (torch.rand(k, generator=gen) < 0.5).float()
        if k > 1:
            if float(torch.rand(1, generator=gen)) < ZERO_VARIANCE_FRACTION:
                r[:] = r[0]
            elif r.min() == r.max():
                r[draw(0, k - 1)] = 1 - r[0]
        for j in range(k):
            prompts.append(prompt)
            completions.append(chars(draw(*COMPLETION_TOKENS) - 1) + [tokenizer.eos_token_id])
            group.append(i)
        rewards.append(r)
    p_ids, p_mask = pad(prompts, tokenizer.pad_token_id, "left")
    c_ids, c_mask = pad(completions, tokenizer.pad_token_id, "right")
    return Rollouts(problem_ids=[f"bench-{i}" for i in range(n)], group=torch.tensor(group, dtype=torch.long),
                    prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids, completion_mask=c_mask,
                    sample_logps=torch.zeros(c_ids.shape), rewards=torch.cat(rewards), completions=[""] * len(group),
                    temperature=1.0)


def make_backend(method: str, micro_batch: int, proj_dim: int = 8192):
    if method.startswith("proj-"):  # projected features, timed like the exact signals
        from ..gradients.projections import get_projector
        from .fidelity import VARIANTS
        kind, kw = VARIANTS.get(method[len("proj-"):], (None, {}))
        if kind is None or kw.get("allocation") == "energy":
            raise ValueError(f"unknown projection row '{method}' (choose from: proj-factored, proj-khatri-rao, "
                             f"proj-sparse, proj-dense; energy allocation costs the same as its size-split twin)")
        return get_projector(kind, proj_dim, seed=0, **kw)
    if method == "floor":
        return GradientBackend(micro_batch=micro_batch)
    if method == "naive":
        return NaiveGradients(micro_batch=micro_batch)
    if method == "func":
        return FuncGradients(micro_batch=micro_batch)
    if method in ("onepass", "onepass-z", "onepass-zcos"):
        return OnePassGradients(micro_batch=micro_batch)
    raise ValueError(f"unknown scoring backend '{method}' (choose from: {', '.join((*METHODS[1:], *PROJECTION_ROWS))})")


def runner(method: str, backend, model, batch: SurrogateBatch, direction: torch.Tensor,
           micro_batch: int = 256) -> Callable:
    """The call that is timed: floor -> flat gradient; proj-* -> features [n, d]; the others -> ProblemSignals."""
    if method == "floor":
        ones = torch.ones(batch.num_problems)
        return lambda: backend.combined_gradient(model, batch, ones)
    if method.startswith("proj-"):
        return lambda: backend.features(model, batch, micro_batch)
    if method in ("onepass-z", "onepass-zcos"):
        return lambda: backend.problem_signals(model, batch, direction, per_completion=True,
                                               with_norms=method == "onepass-zcos")
    return lambda: backend.problem_signals(model, batch, direction)


# ---------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_forked(fn: Callable, warm: Callable) -> dict:
    """Run `fn` in a forked child; return the growth of its resident memory during the call (see module doc)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.close(read_end)
            torch.set_num_threads(1)  # OpenMP pools do not survive fork; one thread is always safe
            warm()
            gc.collect()
            _malloc_trim()
            exact = _reset_peak_rss()
            before = _maxrss_bytes()
            fn()
            msg = {"peak_bytes": max(0, _maxrss_bytes() - before), "exact": exact}
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            msg = {"error": f"{type(e).__name__}: {e}"}
        os.write(write_end, json.dumps(msg).encode())
        os.close(write_end)
        os._exit(0)
    os.close(write_end)
    chunks = []
    while True:
        data = os.read(read_end, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"error": f"child exited with status {status} and no result"}
    return json.loads(b"".join(chunks))


def peak_memory_cuda(fn: Callable, warm: Callable, device: torch.device) -> dict:
    warm()
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before, "exact": True}


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda"
    return "fork" if hasattr(os, "fork") else "unavailable"


MEMORY_NOTES = {
    "fork": "CPU: growth of resident memory (ru_maxrss after the call minus ru_maxrss right before it) in a "
            "forked child per (model, chunk, method), after a 2-problem warm-up, gc, malloc_trim and a reset of "
            "the peak-RSS mark via /proc/self/clear_refs; rows with memory_exact=false could not reset the mark "
            "and are lower bounds",
    "cuda": "CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() before the call, after a warm-up",
    "unavailable": "no fork() on this platform: peak memory not measured",
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: error relative to the scale of the reference (0 when both are all zero)."""
    if a.numel() == 0:
        return 0.0
    a, b = a.double(), b.double()
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


def signal_errors(got: ProblemSignals, ref: ProblemSignals) -> dict:
    norm = 0.0 if torch.isnan(got.norms).all() else rel_err(got.norms, ref.norms)  # onepass-z forms no norms
    dot = max((rel_err(got.dots[:, d], ref.dots[:, d]) for d in range(ref.dots.shape[1])), default=0.0)
    return {"norm_rel_err": norm, "dot_rel_err": dot, "max_rel_err": max(norm, dot)}


# ---------------------------------------------------------------------------------------------- one config


@dataclass
class Settings:
    k: int = 8
    repeats: int = 3
    backends: tuple = ("naive", "func", "onepass", "onepass-z")
    max_naive_chunk: int = 256
    micro_batch: int = 256
    memory: str = "auto"  # auto | all | cheap | none
    seed: int = 0
    proj_dim: int = 8192  # dimension of the proj-* rows


def bench_config(model_name: str, model, tokenizer, n: int, s: Settings, device: torch.device,
                 memory: str) -> tuple[list[dict], dict]:
    """Time (and measure) every method on one chunk of n problems; returns rows and cost bookkeeping."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rollouts = fabricate_rollouts(tokenizer, n, s.k, seed=s.seed + n)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    live = [i for i, zv in enumerate(rollouts.zero_variance()) if not zv][:2] or [0]
    warm_rollouts = rollouts.select_problems(live)  # warm-up on 2 problems that carry signal
    warm_batch = SurrogateBatch(warm_rollouts, warm_rollouts.advantages("none"))
    direction = unit(GradientBackend(s.micro_batch).pooled_gradient(model, batch)).unsqueeze(0).to(device)
    base = dict(model=model_name, params=params, chunk=n, k=s.k, completions=int(rollouts.group.numel()),
                completion_tokens=int(rollouts.completion_mask.sum()),
                zero_variance=int(rollouts.zero_variance().sum()))

    rows: dict[str, dict] = {}
    active: dict[str, tuple[Callable, Callable]] = {}
    for method in ("floor", *[b for b in s.backends if b != "floor"]):
        row = {**base, "method": method, "status": "ok", "seconds": None, "times": [], "x_floor": None,
               "peak_mb": None, "memory_exact": None, "max_rel_err": None, "norm_rel_err": None,
               "dot_rel_err": None}
        rows[method] = row
        if method == "naive" and n > s.max_naive_chunk:
            row["status"] = f"skipped (chunk > --max-naive-chunk {s.max_naive_chunk})"
            continue
        backend = make_backend(method, s.micro_batch, s.proj_dim)
        active[method] = (runner(method, backend, model, batch, direction, s.micro_batch),
                          runner(method, backend, model, warm_batch, direction, s.micro_batch))

    timing_cost = 0.0
    for method, (_, warm) in list(active.items()):  # warm-up: lazy initialisation stays out of the timings
        try:
            timing_cost += timed(warm, device)[0]
        except Exception as e:  # noqa: BLE001
            if method == "floor":
                raise
            rows[method]["status"] = f"error: {type(e).__name__}: {e}"
            del active[method]

    outputs: dict[str, ProblemSignals] = {}
    order = list(active)
    for rep in range(s.repeats):
        for method in order[rep % len(order):] + order[:rep % len(order)]:  # interleaved, rotated per repeat
            if method not in active:
                continue
            try:
                seconds, out = timed(active[method][0], device)
            except Exception as e:  # noqa: BLE001
                if method == "floor":
                    raise
                rows[method]["status"] = f"error: {type(e).__name__}: {e}"
                del active[method]
                continue
            timing_cost += seconds
            rows[method]["times"].append(seconds)
            if isinstance(out, ProblemSignals) and method not in outputs:  # exact signals are checked vs naive
                outputs[method] = out

    floor = statistics.median(rows["floor"]["times"])
    for method, row in rows.items():
        if row["times"]:
            row["seconds"] = statistics.median(row["times"])
            row["x_floor"] = row["seconds"] / floor
    if "naive" in outputs:
        for method, out in outputs.items():
            rows[method].update(signal_errors(out, outputs["naive"]))

    # Peak memory, one more (untimed) run per method.
    memory_cost, measured = 0.0, []
    if memory != "none":
        wanted = list(active) if memory == "all" else [m for m in active if m in ("floor", "onepass")]
        for method in wanted:
            fn, warm = active[method]
            start = time.perf_counter()
            res = peak_memory_cuda(fn, warm, device) if device.type == "cuda" else peak_memory_forked(fn, warm)
            memory_cost += time.perf_counter() - start
            if "error" in res:
                rows[method]["peak_mb"] = None
                rows[method]["memory_error"] = res["error"]
            else:
                rows[method]["peak_mb"] = res["peak_bytes"] / 2**20
                rows[method]["memory_exact"] = res["exact"]
            measured.append(method)
    cost = {"model": model_name, "chunk": n, "timing_seconds": timing_cost, "memory_seconds": memory_cost,
            "memory_measured_for": measured}
    return list(rows.values()), cost


# ---------------------------------------------------------------------------------------------- report


def format_table(rows: list[dict]) -> str:
    head = f"{'model':6s} {'params':>11s} {'chunk':>6s} {'method':12s} {'seconds':>9s} {'x floor':>8s} " \
           f"{'peak MB':>8s} {'max rel err':>12s}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        sec = f"{r['seconds']:9.3f}" if r["seconds"] is not None else f"{'-':>9s}"
        ratio = f"{r['x_floor']:8.2f}" if r["x_floor"] is not None else f"{'-':>8s}"
        mem = f"{r['peak_mb']:8.1f}" if r["peak_mb"] is not None else f"{'-':>8s}"
        if r["method"] == "naive" and r["max_rel_err"] is not None:
            err = f"{'(ref)':>12s}"
        else:
            err = f"{r['max_rel_err']:12.2e}" if r["max_rel_err"] is not None else f"{'-':>12s}"
        status = "" if r["status"] == "ok" else r["status"]
        lines.append(f"{r['model']:6s} {r['params']:11,d} {r['chunk']:6d} {r['method']:12s} {sec} {ratio} {mem} "
                     f"{err}  {status}".rstrip())
    return "\n".join(lines)


def run_scoring(models: list[str], chunks: list[int], settings: Settings, out: str | None = None,
                device: str = "auto", threads: int | None = 1, echo: Callable[[str], None] | None = print) -> dict:
    """Run the benchmark; write the JSON to `out` (if given) and return it."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    unknown = [b for b in settings.backends if b not in (*METHODS, *PROJECTION_ROWS)]
    if unknown:
        raise ValueError(f"unknown scoring backend(s) {', '.join(unknown)} "
                         f"(choose from: {', '.join((*METHODS[1:], *PROJECTION_ROWS))})")
    missing = [m for m in models if m not in MODEL_CONFIGS]
    if missing:
        raise ValueError(f"unknown benchmark model(s) {', '.join(missing)} (choose from: {', '.join(MODEL_CONFIGS)})")
    if settings.repeats < 1 or settings.k < 1 or any(c < 1 for c in chunks):
        raise ValueError("--repeats, --k and every chunk must be at least 1")
    how = memory_method(dev)
    mode = "none" if settings.memory == "none" or how == "unavailable" else settings.memory
    tokenizer = build_tokenizer()
    rows, costs = [], []
    for name in models:
        model = build_model(name, tokenizer, settings.seed).to(dev)
        if echo:
            echo(f"model {name}: {sum(p.numel() for p in model.parameters()):,d} parameters "
                 f"({MODEL_CONFIGS[name] or 'tiny defaults'})")
        for n in chunks:
            effective = "all" if mode == "auto" else mode
            if mode == "auto" and costs:  # all while memory runs cost < 2x the timing so far, else the cheap pair
                timing = sum(c["timing_seconds"] for c in costs)
                spent = sum(c["memory_seconds"] for c in costs)
                effective = "all" if spent < 2 * timing else "cheap"
            got, cost = bench_config(name, model, tokenizer, n, settings, dev, effective)
            rows += got
            costs.append(cost)
            if echo:
                echo(format_table(got).split("\n", 2)[2])
        del model
        gc.collect()
    result = {
        "benchmark": "scoring",
        "machine": machine_info(dev),
        "settings": {"models": models, "chunks": chunks, "k": settings.k, "repeats": settings.repeats,
                     "backends": list(settings.backends), "max_naive_chunk": settings.max_naive_chunk,
                     "micro_batch": settings.micro_batch, "seed": settings.seed,
                     "prompt_tokens": [PROMPT_CHARS[0] + 1, PROMPT_CHARS[1] + 1],
                     "completion_tokens": list(COMPLETION_TOKENS), "direction": "unit pooled gradient of the chunk",
                     "timing": "median over repeats, methods interleaved (rotated) within each repeat, "
                               "after a 2-problem warm-up"},
        "memory": {"method": how if mode != "none" else "none", "mode": mode, "note": MEMORY_NOTES.get(how, ""),
                   "costs": costs},
        "error_metric": "max |x - naive| / max |naive| over norms and over dots (per direction); naive is "
                        "NaiveGradients' loop with float64 reductions",
        "rows": rows,
    }
    return publish(result, format_table(rows),
                   f"memory: {result['memory']['note'] if mode != 'none' else 'not measured'}", out, echo)


def run_from_args(args: argparse.Namespace) -> int:
    settings = Settings(k=args.k, repeats=args.repeats, backends=tuple(args.backends),
                        max_naive_chunk=args.max_naive_chunk, micro_batch=args.micro_batch, memory=args.memory,
                        seed=args.seed, proj_dim=args.proj_dim)
    run_scoring(args.models, args.chunks, settings, out=args.out, device=args.device, threads=args.threads)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/scoring.py", description=__doc__.splitlines()[0])
    add_scoring_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
