"""Run directories → a result table (terminal and Markdown) and `summary.md`.

A run directory is what `gradalign.curriculum.loop.Curriculum` leaves behind (`config.yaml`, `initial.json`,
`rounds.jsonl`, ...); a comparison directory holds one run directory per method. Everything here only reads
those files, so it works on finished, running (rounds so far) and copied runs alike.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from ..data.problem import one_line
from ..curriculum.records import ROUNDS_FILE, is_number, read_rounds, time_split
from ..data.regimes import CORRUPTED_POOLS
from ..fileio import write_text
from ..selection.diagnostics import LABELS
from .cost import run_cost
from .markdown import pipe_table, relative_link

PREFERRED_ORDER = ("gradalign",)  # shown first (table rows, legend); the rest by directory name
DASH = "—"
TABLE_WIDTH = 100


@dataclass
class RunView:
    """One run directory, read: enough to tabulate and plot it."""

    name: str  # directory name
    method: str
    config: dict
    initial: dict
    rounds: list[dict]
    path: Path | None = field(default=None, compare=False)

    @property
    def scenario(self) -> str:
        return str(self.config.get("scenario") or "custom")

    @property
    def corrupted_shares(self) -> list[float]:
        """Per finished round, the share of selected problems with corrupted rewards ([] when not applicable)."""
        return [float(r["selected_corrupted_share"]) for r in self.rounds
                if r.get("selected_corrupted_share") is not None]

    def curve(self) -> tuple[list[int], list[float]]:
        """(GRPO steps, test accuracy): step 0 is the evaluation before training, then one point per round."""
        steps = [0] + [int(r["step"]) for r in self.rounds]
        acc = [float(self.initial["accuracy"])] + [float(r["test"]["accuracy"]) for r in self.rounds]
        return steps, acc


# ── reading ──────────────────────────────────────────────────────────────────────────────────────────────────
def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: missing (not a finished or started run directory?)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "parse error"
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where} ({one_line(problem)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({one_line(e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def read_json_object(path: Path, what: str, missing: str | None = None) -> dict:
    """A JSON object from `path`; one-line ValueError naming the file when it is not one (or, with `missing`,
    when it does not exist: "PATH: missing (MISSING)")."""
    if missing is not None and not path.is_file():
        raise ValueError(f"{path}: missing ({missing})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def _read_initial(path: Path) -> dict:
    data = read_json_object(path, "the evaluation before training",
                            missing="the evaluation before training was not written")
    if not is_number(data.get("accuracy")):
        raise ValueError(f"{path}: expected an object with a numeric 'accuracy'")
    return data


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ROUNDS_FILE).is_file()


def load_run(run_dir: str | os.PathLike) -> RunView:
    """Read one run directory. A missing or garbled file is a one-line `ValueError` naming that file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a directory")
    rounds = read_rounds(run_dir / ROUNDS_FILE)
    config = _read_config(run_dir / "config.yaml")
    initial = _read_initial(run_dir / "initial.json")
    method = config.get("method") or (rounds[0].get("method") if rounds else None) or run_dir.name
    return RunView(name=run_dir.name, method=str(method), config=config, initial=initial, rounds=rounds,
                   path=run_dir)


def _order_key(run: RunView) -> tuple:
    rank = PREFERRED_ORDER.index(run.method) if run.method in PREFERRED_ORDER else len(PREFERRED_ORDER)
    return rank, run.name


def find_runs(directory: str | os.PathLike) -> list[RunView]:
    """`directory` itself if it is a run directory, else its immediate subdirectories that are (gradalign first)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    if is_run_dir(directory):
        return [load_run(directory)]
    runs = [load_run(sub) for sub in sorted(directory.iterdir()) if sub.is_dir() and is_run_dir(sub)]
    if not runs:
        raise ValueError(f"{directory}: no run directories (rounds.jsonl) found")
    return sorted(runs, key=_order_key)


# ── one row per method ───────────────────────────────────────────────────────────────────────────────────────
def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def method_rows(runs: list[RunView]) -> list[dict]:
    """Per run: accuracy before/after/best/Δ, corrupted share of the selections, zero-variance, wall time split."""
    rows = []
    for run in runs:
        steps, acc = run.curve()
        before = acc[0]
        after = acc[-1] if run.rounds else None
        best = max(acc[1:]) if run.rounds else None
        shares = run.corrupted_shares
        zero_var = [float(r["zero_variance"]) for r in run.rounds if is_number(r.get("zero_variance"))]
        last_test = run.rounds[-1]["test"] if run.rounds else {}
        rows.append({
            "name": run.name,
            "method": run.method,
            "scenario": run.scenario,
            "rounds": len(run.rounds),
            "steps": steps[-1],
            "before": before,
            "after": after,
            "best": best,
            "best_step": steps[1:][acc[1:].index(best)] if best is not None else None,
            "delta": after - before if after is not None else None,
            "corrupted_shares": shares,
            "corrupted_mean": _mean(shares),
            "zero_variance_mean": _mean(zero_var),
            "selected_mean": _mean([float(r["selected_count"]) for r in run.rounds
                                    if is_number(r.get("selected_count"))]),
            "fallbacks": [(int(r.get("round", i)), str(r["fallback"])) for i, r in enumerate(run.rounds)
                          if r.get("fallback")],
            **{f"time_{name}": value for name, value in time_split(run.rounds).items()},
            "cost": run_cost(run.rounds),
            "by_source_before": dict(run.initial.get("by_source") or {}),
            "by_source_after": dict(last_test.get("by_source") or {}),
        })
    return rows


# ── formatting ───────────────────────────────────────────────────────────────────────────────────────────────
def _acc(x: float | None) -> str:
    return DASH if x is None else f"{x:.3f}"


def format_delta(x: float | None) -> str:
    return DASH if x is None else f"{x:+.3f}"


def format_share(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def format_seconds(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:.1f}" if x < 10_000 else f"{x:.0f}"


def format_count(x: float | None, like: float | None = None) -> str:
    """A count in a few digits, 812, 52.3k, 1.21M, in the unit of `like` when given (a std beside its mean)."""
    if x is None or math.isnan(x):
        return DASH
    size = abs(like if like is not None and not math.isnan(like) else x)
    for scale, suffix, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if size >= scale:
            return f"{x / scale:.{digits}f}{suffix}"
    return f"{x:.0f}"


def format_ratio(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def _before_after(row: dict) -> str:
    return f"{_acc(row['before'])} → {_acc(row['after'])}"


def _fit_shares(shares: list[float], width: int) -> str:
    """Per-round shares, "0.22 0.31 0.28"; the middle rounds elided ("0.22 0.31 … 0.25") if it would not fit."""
    if not shares:
        return DASH
    cells = [format_share(s) for s in shares]
    text = " ".join(cells)
    if len(text) <= width:
        return text
    for shown in range(len(cells) - 1, 1, -1):
        head, tail = cells[:(shown + 1) // 2], cells[len(cells) - shown // 2:]
        text = " ".join(head + ["…"] + tail)
        if len(text) <= width:
            return text
    return (cells[0] + " …")[:max(width, 1)]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def format_table(rows: list[dict], width: int = TABLE_WIDTH) -> str:
    """Fixed-width table for a terminal (fits `width` columns, 100 by default)."""
    times = [("rollouts", "time_rollouts"), ("scoring", "time_scoring"), ("training", "time_training"),
             ("total", "time_total")]
    w_method = max([len("method")] + [len(r["method"]) for r in rows])
    w_acc = len("before → after")
    w_delta = 6
    w_mean = 4
    w_time = max(8, *(len(format_seconds(r[k])) for r in rows for _, k in times)) if rows else 8
    fixed = 2 + w_acc + 2 + w_delta + 2 + 2 + w_mean + 2 + len(times) * (w_time + 2) - 2
    w_method = max(len("method"), min(w_method, width - fixed - len("0.22 … 0.25")))  # long names are cut
    fixed += w_method
    w_shares = max(len("per round"), width - fixed)
    w_shares = min(w_shares, max([len("per round")] + [len(" ".join(format_share(s) for s in r["corrupted_shares"]))
                                                       for r in rows]))

    def line(method, acc, delta, shares, mean, tvals):
        return (f"{method:<{w_method}}  {acc:<{w_acc}}  {delta:>{w_delta}}  {shares:<{w_shares}}  "
                f"{mean:>{w_mean}}  " + "  ".join(f"{t:>{w_time}}" for t in tvals)).rstrip()

    group_time = "wall time (s)"
    w_times = len(times) * (w_time + 2) - 2
    head1 = (f"{'':<{w_method}}  {'test accuracy':<{w_acc}}  {'':>{w_delta}}  "
             f"{'corrupted share':<{w_shares + 2 + w_mean}}  {group_time:>{w_times}}").rstrip()
    head2 = line("method", "before → after", "Δ", "per round", "mean", [name for name, _ in times])
    body = [line(_cut(r["method"], w_method), _before_after(r), format_delta(r["delta"]),
                 _fit_shares(r["corrupted_shares"], w_shares), format_share(r["corrupted_mean"]),
                 [format_seconds(r[k]) for _, k in times]) for r in rows]
    rule = "─" * max(len(s) for s in [head1, head2, *body])
    return "\n".join([head1, head2, rule, *body])


# The cost ledger's columns (reports/cost.py: run_cost), grouped as the terminal heads them.
COST_GROUPS = (("completions", (("selection", "selection_completions"), ("training", "training_completions"),
                                ("reused", "reused_completions"))),
               ("", (("sel/train", "selection_per_training"),)),
               ("generated tokens", (("selection", "selection_tokens"), ("training", "training_tokens"))),
               ("fwd+bwd tokens", (("selection", "fb_selection"), ("training", "fb_training"))))
COST_LEGEND = "selection: generated only to choose problems; training: consumed by training, reused included"
COST_MARKDOWN_NAMES = {"sel/train": "selection per training", "fwd+bwd tokens": "forward+backward tokens"}


def cost_cell(cost: dict | None, key: str) -> str:
    """One ledger figure of a run as text (— for a run recorded before the ledger)."""
    if cost is None:
        return DASH
    return format_ratio(cost[key]) if key == "selection_per_training" else format_count(cost[key])


def format_cost_table(rows: list[dict], width: int = TABLE_WIDTH) -> str:
    """The runs' cost ledgers as a terminal table that fits `width` ("" when no run recorded a ledger)."""
    if not any(r["cost"] for r in rows):
        return ""
    columns = [(head, key) for _, cols in COST_GROUPS for head, key in cols]
    cells = [[cost_cell(r["cost"], key) for _, key in columns] for r in rows]
    widths = [max(len(head), *(len(c[i]) for c in cells)) for i, (head, _) in enumerate(columns)]
    first = 0
    for label, cols in COST_GROUPS:  # a group's label must fit over its columns
        last = first + len(cols) - 1
        widths[last] += max(0, len(label) - (sum(widths[first:last + 1]) + 2 * (len(cols) - 1)))
        first = last + 1
    names = [r["method"] for r in rows]  # as the results table above names them
    fixed = sum(w + 2 for w in widths)
    w_method = max(len("method"), min(max(len(n) for n in names), width - fixed))

    def line(method: str, values: list[str]) -> str:
        return (f"{method:<{w_method}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, widths))).rstrip()

    groups, first = [], 0
    for label, cols in COST_GROUPS:
        span = sum(widths[first:first + len(cols)]) + 2 * (len(cols) - 1)
        groups.append(f"{label:<{span}}")
        first += len(cols)
    head1 = (f"{'':<{w_method}}  " + "  ".join(groups)).rstrip()
    head2 = line("method", [head for head, _ in columns])
    body = [line(_cut(name, w_method), c) for name, c in zip(names, cells)]
    rule = "─" * max(len(s) for s in [head1, head2, *body])
    return "\n".join(["cost ledger, summed over rounds", head1, head2, rule, *body, _cut(COST_LEGEND, width)])


def cost_markdown_table(rows: list[dict]) -> str | None:
    """The runs' cost ledgers as a pipe table (None when no run recorded a ledger)."""
    if not any(r["cost"] for r in rows):
        return None
    name = lambda text: COST_MARKDOWN_NAMES.get(text, text)  # noqa: E731
    header = ["method", *(f"{name(group)}: {head}" if group else name(head)
                          for group, cols in COST_GROUPS for head, _ in cols)]
    keys = [key for _, cols in COST_GROUPS for _, key in cols]
    return pipe_table(header, [[_row_name(r), *(cost_cell(r["cost"], k) for k in keys)] for r in rows])


def _row_name(row: dict) -> str:
    """A `method_rows` row's method, with its directory when that says more (e.g. a schedule: `gradalign-z@batch`)."""
    return row["method"] if row["name"] == row["method"] else f"{row['method']} ({row['name']})"


def markdown_table(rows: list[dict]) -> str:
    header = ["method", "test acc before", "after", "best", "Δ", "corrupted share / round", "mean corrupted",
              "zero-var (mean)", "rollouts s", "scoring s", "training s", "evaluation s", "total s", "GRPO steps"]
    body = []
    for r in rows:
        shares = " ".join(format_share(s) for s in r["corrupted_shares"]) or DASH
        zero_var = DASH if r["zero_variance_mean"] is None else f"{r['zero_variance_mean']:.1f}"
        cells = [f"**{r['method']}**" if r["name"] == r["method"] else f"**{r['method']}** ({r['name']})",
                 _acc(r["before"]), _acc(r["after"]), _acc(r["best"]), format_delta(r["delta"]), shares,
                 format_share(r["corrupted_mean"]), zero_var,
                 *(format_seconds(r[f"time_{k}"]) for k in ("rollouts", "scoring", "training", "evaluation", "total")),
                 str(r["steps"])]
        body.append(cells)
    # names and a list of shares read left to right
    return pipe_table(header, body, left=(0, header.index("corrupted share / round")))


def _by_source_table(rows: list[dict]) -> str | None:
    sources: list[str] = []
    for r in rows:
        for s in list(r["by_source_before"]) + list(r["by_source_after"]):
            if s not in sources:
                sources.append(s)
    if len(sources) < 2:
        return None
    body = []
    for r in rows:
        cells = [r["method"]]
        for s in sources:
            b, a = r["by_source_before"].get(s), r["by_source_after"].get(s)
            cells.append(f"{_acc(b if is_number(b) else None)} → {_acc(a if is_number(a) else None)}")
        body.append(cells)
    return pipe_table(["method", *(f"{s} (before → after)" for s in sources)], body)


def _config_value(runs: list[RunView], key: str) -> Any:
    """The value of `key` across runs: one value, or "a / b" when the runs differ, or None when absent."""
    values = []
    for run in runs:
        v = run.config.get(key)
        if v is not None and v not in values:
            values.append(v)
    if not values:
        return None
    return values[0] if len(values) == 1 else " / ".join(str(v) for v in values)


def _essentials(runs: list[RunView]) -> list[str]:
    get = lambda k: _config_value(runs, k)  # noqa: E731
    out = []
    scenario = get("scenario")
    if any(run.config.get("pool") for run in runs):
        scenario = f"custom pool ({get('pool')})"
    if scenario is not None:
        extra = ""
        if scenario in CORRUPTED_POOLS and get("corrupt_fraction") is not None:
            extra = f" (corrupted fraction of the pool: {get('corrupt_fraction')})"
        out.append(f"- **scenario**: {scenario}{extra}")
    if get("model_name_or_path") is not None:
        out.append(f"- **model**: {get('model_name_or_path')}")
    r, t, b = get("rounds"), get("steps_per_round"), get("problems_per_step")
    if r is not None or t is not None:
        out.append(f"- **schedule**: {r if r is not None else '?'} rounds × {t if t is not None else '?'} "
                   f"GRPO steps × {b if b is not None else '?'} problems per step")
    m, q = runs[0].config.get("chunk_size"), runs[0].config.get("selection_ratio")
    if is_number(m):
        keep = (f", keep floor(M/q) = floor({m}/{q}) = {max(1, int(m) // int(q))} per round"
                if is_number(q) and q else "")
        out.append(f"- **chunk**: M = {get('chunk_size')} candidates per round{keep}")
    if get("rollouts_per_problem") is not None:
        out.append(f"- **rollouts per candidate**: k_r = {get('rollouts_per_problem')}")
    if get("seed") is not None:
        out.append(f"- **seed**: {get('seed')}")
    code = describe_code(code_versions(runs), "run")
    if code:
        out.append(f"- {code}")
    return out


def code_versions(runs: Iterable[RunView]) -> dict[str | None, int]:
    """Source fingerprint (`provenance`) -> how many runs ran it; None: rounds recorded without one (before
    fingerprints were kept). A run resumed on other code counts under each version it ran."""
    counts: dict[str | None, int] = {}
    for run in runs:
        for code in {r.get("code") for r in run.rounds}:
            counts[code] = counts.get(code, 0) + 1
    return counts


def describe_code(versions: dict[str | None, int], noun: str) -> str | None:
    """Which source the runs (`noun`: "run", "cell") ran; a warning when they ran more than one (None where none
    recorded any)."""
    known = sorted(((n, code) for code, n in versions.items() if code is not None), reverse=True)
    if not known:
        return None
    count = lambda n: f"{n} {noun}" if n == 1 else f"{n} {noun}s"  # noqa: E731
    parts = [f"{code} ({count(n)})" for n, code in known]
    if versions.get(None):
        parts.append(f"not recorded ({count(versions[None])}, run before fingerprints were kept)")
    if len(known) == 1:
        return f"**code**: source {', '.join(parts)}"
    return (f"**code**: the {noun}s ran {len(known)} versions of the source: {', '.join(parts)}; a difference "
            f"between methods may be a difference between versions")


HOW_TO_READ = (
    "**Test accuracy** is measured on the held-out test set before training (step 0) and after every round; "
    "Δ is after − before. **Corrupted share** is the fraction of the problems a method selected whose rewards "
    "are coin flips (a fair coin per rollout, whatever the completion says), per round and averaged over rounds: "
    "training on them teaches nothing but noise. The paper's pattern: AccGreedy, which prefers problems whose "
    "pass rate is near 1/2, picks mostly corrupted problems (>80% in the paper); random selection picks about "
    "the pool's share (about half); GradAlign, which keeps problems whose policy gradient agrees with the "
    "gradient on a trusted validation set, picks far fewer (~18–30%). Wall time is summed over rounds: "
    "rollouts include the validation rollouts, scoring includes the selection itself."
)

HOW_TO_READ_CLEAN = (
    "**Test accuracy** is measured on the held-out test set before training (step 0) and after every round; "
    "Δ is after − before. This scenario has no corrupted rewards, so the corrupted share (the fraction of "
    "selected problems whose rewards are coin flips) does not apply and shows as —. Wall time is summed over "
    "rounds: rollouts include the validation rollouts, scoring includes the selection itself."
)


COST_HOW_TO_READ = (
    "Summed over rounds; test evaluation is not a cost (every method pays it alike). **Selection** completions "
    "were generated only to choose problems (candidates, validation, warm-up and offline rollouts, less those "
    "training reused); **training** completions are those training consumed, the reused selection completions "
    "included; **selection per training** is their ratio (random and full generate none for selection). "
    "Generated tokens are split the same way (they add up to all tokens generated). **Forward+backward** tokens "
    "(prompt + completion) went through a backward pass: for selection (scoring and LearnAlign's warm-up) and "
    "for training. — for a run recorded before the cost ledger existed."
)


def composition_table(runs: list[RunView]) -> str | None:
    """Mean share of each source among the selected problems, per method (e.g. the target task's share)."""
    shares: list[tuple[str, dict[str, float]]] = []
    for run in runs:
        per_round = [r["selected_by_source"] for r in run.rounds
                     if isinstance(r.get("selected_by_source"), dict) and r.get("selected_count")]
        if not per_round:
            continue
        sources = sorted({s for counts in per_round for s in counts})
        shares.append((run.method, {s: float(np.mean([counts.get(s, 0) / max(sum(counts.values()), 1)
                                                       for counts in per_round])) for s in sources}))
    sources = sorted({s for _, sh in shares for s in sh})
    if len(sources) < 2:
        return None
    return pipe_table(["method", *sources], [[m, *(format_share(sh.get(s, 0.0)) for s in sources)] for m, sh in shares])


def offpolicy_table(runs: list[RunView]) -> str | None:
    """CROPI with offpolicy_fidelity: per stage, off- vs on-policy gradient cosines and selection overlap."""
    body = []
    for run in runs:
        for r in run.rounds:
            f = r.get("offpolicy")
            if isinstance(f, dict):
                figures = [f.get(k) for k in ("cosine_mean", "cosine_median", "share_cosine_above_0.6",
                                                "selection_overlap")]
                body.append([run.method, str(r.get("round")), str(f.get("problems")),
                             *(format_share(c) if is_number(c) else DASH for c in figures)])
    if not body:
        return None
    return pipe_table(["method", "stage", "problems", "cosine mean", "median", "share > 0.6", "top-N overlap"], body)


# ── selection diagnostics: record["diagnostics"] (selection/diagnostics.py) ──────────────────────────────────
GOOD_MEANS = {"corrupted": "clean reward", "target": "from a validation source", "utility": "useful"}
LABEL_KEYS = ("eligible_good_share", "auc", "top_good_share", "selected_good_share")
LABEL_HEADERS = ("eligible good", "AUC", "top-k good", "selected good")
LABEL_FREE_KEYS = ("score_std", "positive_share", "pass_rate_corr", "length_corr")
LABEL_FREE_HEADERS = ("score std", "positive share", "ρ(score, pass rate)", "ρ(score, length)")

DIAGNOSTICS_HOW_TO_READ = (
    "Per round, among the candidates a method could choose (*eligible*), then averaged over rounds (rounds "
    "where a figure is undefined are left out). For each label the pool carries (corrupted: good = clean reward; "
    "target: good = from a validation source; utility: good = useful): **eligible good** is the good share of the "
    "eligible candidates (what a uniform draw gets), **AUC** the probability that a random good candidate "
    "outscores a random bad one (0.5 = no separation, ties count half), **top-k good** the good share of the k "
    "best scores (k = the number kept), **selected good** the good share of what was selected. Label-free: the "
    "spread of the scores, the share of positive scores and the Spearman correlations (ρ) of the score with the "
    "pass rate and with the mean completion length. Methods that draw uniformly (random, nonzero-variance) do "
    "not rank, so they show — for the ranking figures; `full` selects nothing and is not listed."
)


def _as_dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def round_diagnostics(run: RunView) -> list[dict]:
    """The rounds' `diagnostics` ([] for `full` and for runs recorded before diagnostics existed)."""
    return [r["diagnostics"] for r in run.rounds if isinstance(r.get("diagnostics"), dict)]


def _round_mean(values: Iterable[Any]) -> float | None:
    """Mean over rounds, ignoring nulls (and NaN)."""
    return _mean([float(v) for v in values if is_number(v) and not math.isnan(v)])


def diagnostics_labels(diags: list[dict]) -> list[str]:
    """The labels some round carries: the known ones in `LABELS` order, then any other."""
    found = {name for d in diags for name in _as_dict(d.get("labels"))}
    return [name for name in LABELS if name in found] + sorted(found - set(LABELS))


def diagnostics_means(run: RunView) -> dict | None:
    """Mean over rounds of every figure, {"labels": {label: {key: mean}}, "label_free": {key: mean}}; None when
    no round has diagnostics."""
    diags = round_diagnostics(run)
    if not diags:
        return None
    per_label = lambda d, name: _as_dict(_as_dict(d.get("labels")).get(name))  # noqa: E731
    return {"labels": {name: {k: _round_mean(per_label(d, name).get(k) for d in diags) for k in LABEL_KEYS}
                       for name in diagnostics_labels(diags)},
            "label_free": {k: _round_mean(_as_dict(d.get("label_free")).get(k) for d in diags)
                           for k in LABEL_FREE_KEYS}}


def _corr(x: float | None) -> str:
    return DASH if x is None else f"{x:+.2f}"


def _spread(x: float | None) -> str:
    return DASH if x is None else f"{x:.3g}"


def _run_name(run: RunView) -> str:
    return run.method if run.name == run.method else f"{run.method} ({run.name})"


def diagnostics_table(runs: list[RunView]) -> str | None:
    """One row per run with diagnostics: per label, the means over rounds of LABEL_KEYS; then the label-free ones."""
    means = [(run, m) for run in runs if (m := diagnostics_means(run)) is not None]
    if not means:
        return None
    labels = diagnostics_labels([d for run, _ in means for d in round_diagnostics(run)])
    header = ["method", *(f"{name}: {h}" for name in labels for h in LABEL_HEADERS), *LABEL_FREE_HEADERS]
    body = []
    for run, m in means:
        free = m["label_free"]
        body.append([_run_name(run),
                     *(format_share(m["labels"].get(name, {}).get(k)) for name in labels for k in LABEL_KEYS),
                     _spread(free["score_std"]), format_share(free["positive_share"]), _corr(free["pass_rate_corr"]),
                     _corr(free["length_corr"])])
    return pipe_table(header, body)


def format_diagnostics(runs: list[RunView], width: int = TABLE_WIDTH) -> str:
    """Terminal lines, one per run with diagnostics, for the first label present ("" when none has any)."""
    means = [(run, m) for run in runs if (m := diagnostics_means(run)) is not None]
    labels = diagnostics_labels([d for run, _ in means for d in round_diagnostics(run)])
    if not labels:
        return ""
    label = labels[0]
    w = max(len(_run_name(run)) for run, _ in means)
    lines = [_cut(f"selection diagnostics, mean over rounds ({label}: good = {GOOD_MEANS.get(label, 'good')}; "
                  f"ρ: score vs pass rate)", width)]
    for run, m in means:
        fig = m["labels"].get(label, {})
        lines.append(_cut(f"  {_run_name(run):<{w}}  AUC {format_share(fig.get('auc')):>4}  good share: "
                          f"top-k {format_share(fig.get('top_good_share')):>4}  "
                          f"selected {format_share(fig.get('selected_good_share')):>4}  "
                          f"eligible {format_share(fig.get('eligible_good_share')):>4}  "
                          f"ρ {_corr(m['label_free']['pass_rate_corr']):>5}", width))
    return "\n".join(lines)


def summary_markdown(directory: str | os.PathLike, runs: list[RunView], plot_path: str | os.PathLike | None = None,
                     notes: list[str] | None = None, scores_plot: str | os.PathLike | None = None) -> str:
    directory = Path(directory)
    rows = method_rows(runs)
    methods = ", ".join(r["method"] for r in rows)
    parts = [f"# Curriculum results: {directory.name or directory.resolve().name}", "",
             f"Methods: {methods}.", ""]
    essentials = _essentials(runs)
    if essentials:
        parts += ["## Setup", "", *essentials, ""]
    parts += ["## Results", "", markdown_table(rows), ""]
    if plot_path is not None:
        parts += [f"![test accuracy and corrupted share per round]({relative_link(plot_path, directory)})", ""]
    cost = cost_markdown_table(rows)
    if cost:
        parts += ["## Cost", "", cost, "", COST_HOW_TO_READ, ""]
    by_source = _by_source_table(rows)
    if by_source:
        parts += ["## Test accuracy by source", "", by_source, ""]
    composition = composition_table(runs)
    if composition:
        parts += ["## What was selected (share by source, mean over rounds)", "", composition, ""]
    offpolicy = offpolicy_table(runs)
    if offpolicy:
        parts += ["## Off-policy fidelity (CROPI)", "",
                  "Per stage: the cosine between each problem's off-policy gradient (stored rollouts of the behaviour "
                  "policy) and its on-policy gradient (fresh rollouts of the current policy), both projected, over "
                  "the problems whose groups disagree in both; and the overlap of the two top-N selections.", "",
                  offpolicy, ""]
    parts += _diagnostics_section(directory, runs, scores_plot)
    applicable = any(r["corrupted_shares"] for r in rows)
    parts += ["## How to read this", "", HOW_TO_READ if applicable else HOW_TO_READ_CLEAN, ""]
    all_notes = list(notes or [])
    for r in rows:
        for rnd, fb in r["fallbacks"]:
            all_notes.append(f"{r['method']}: round {rnd} used the no-direction fallback ({fb}).")
    if all_notes:
        parts += ["## Notes", "", *(f"- {n}" for n in all_notes), ""]
    return "\n".join(parts)


def _diagnostics_section(directory: Path, runs: list[RunView], scores_plot: str | os.PathLike | None) -> list[str]:
    """The "Selection diagnostics" table, its legend and the score-distribution figure ([] when neither)."""
    table = diagnostics_table(runs)
    parts = ["## Selection diagnostics", ""] if table or scores_plot is not None else []
    if table:
        parts += [table, "", DIAGNOSTICS_HOW_TO_READ, ""]
    if scores_plot is not None:
        parts += [f"![scores of the eligible candidates, good vs bad]({relative_link(scores_plot, directory)})", ""]
    return parts


def write_summary(directory: str | os.PathLike, runs: list[RunView], plot_path: str | os.PathLike | None = None,
                  notes: list[str] | None = None, scores_plot: str | os.PathLike | None = None) -> Path:
    """Write `<directory>/summary.md` atomically; returns its path."""
    path = Path(directory) / "summary.md"
    write_text(path, summary_markdown(directory, runs, plot_path, notes, scores_plot))
    return path
