"""The tables of a benchmark report as text cells: a regime's results, diagnostics, cost and time to accuracy (header +
rows, rendered to Markdown or HTML by `blocks`), and the terminal summary `format_bench_table`."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .bench_cost import TIME_STATS as COST_TIMES
from .bench_stats import DIAGNOSTIC_COLUMNS, REFERENCES, SHARES, TIMES, Stats, regime_rows
from .bench_views import BenchView
from .cost import AXES
from .summary import DASH, format_count, format_delta, format_seconds, format_share


def _stats_text(stats: Stats, digits: int = 3, signed: bool = False) -> str:
    """"mean ± std (n)", or — without seeds."""
    mean, std, n = stats
    return DASH if not n else f"{mean:{'+' if signed else ''}.{digits}f} ± {std:.{digits}f} ({n})"


def _delta_text(row: dict) -> str:
    return DASH if row["method"] == "random" else format_delta(row["delta"])  # random vs itself says nothing


def _steps_text(reached: tuple[float | None, int, int]) -> str:
    mean, hit, n = reached
    if not n:
        return DASH
    if mean is None:
        return f"{DASH} ({hit}/{n})"
    number = f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}"
    return f"{number} ({hit}/{n})"


def _pending_text(row: dict) -> str:
    return f"{row['pending']} ({row['running']} running)" if row["running"] else str(row["pending"])


def _threshold_header(rows: Sequence[dict], ref: str) -> str:
    value = rows[0]["thresholds"][ref] if rows else None
    return f"steps to {ref}" + (f" ({value:.3f})" if value is not None else "")


def _shown_shares(rows: Sequence[dict]) -> list[str]:
    """The share columns some method has (corrupted share means nothing in a regime without corruption)."""
    return [k for k in SHARES if any(r["shares"][k] is not None for r in rows)]


def table_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cell rows) of a regime's table, shared by Markdown and HTML."""
    shares = _shown_shares(rows)
    refs = [ref for ref in REFERENCES if any(r["method"] == ref for r in rows)]  # the references this bench ran
    extras = sorted({name for r in rows for name in r.get("extra", {})})
    header = (["method", "final accuracy ± std (seeds)", "Δ vs random"]
              + [f"{name} test (forgetting)" for name in extras]
              + [_threshold_header(rows, ref) for ref in refs]
              + [f"{k} share" for k in shares] + [f"{k} s" for k in TIMES] + ["pending"])
    body = []
    for r in rows:
        body.append([r["method"], _stats_text(r["final"]), _delta_text(r)]
                    + [_stats_text(r.get("extra", {}).get(name, (math.nan, 0.0, 0))) for name in extras]
                    + [_steps_text(r["steps_to"][ref]) for ref in refs]
                    + [format_share(r["shares"][k]) for k in shares] + [format_seconds(r["times"][k]) for k in TIMES]
                    + [_pending_text(r)])
    return header, body


def diagnostics_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cell rows) of a regime's diagnostics table: mean ± std over seeds (their number)."""
    header = ["method", *(h for _, h in DIAGNOSTIC_COLUMNS), "ρ(score, pass rate)"]
    body = [[r["method"], *(_stats_text(r[k], 2) for k, _ in DIAGNOSTIC_COLUMNS),
             _stats_text(r["pass_rate_corr"], 2, signed=True)] for r in rows]
    return header, body


def format_bench_table(bench: BenchView) -> str:
    """Terminal summary: per regime, final accuracy, Δ vs random and pending cells per method."""
    lines = []
    width = max(len("method"), *(len(m) for m in bench.methods))
    for name, regime in bench.regimes.items():
        lines += [f"{name}", f"  {'method':<{width}}  {'final accuracy':<22}  {'Δ random':>8}  pending"]
        for r in regime_rows(regime, bench.methods):
            lines.append(f"  {r['method']:<{width}}  {_stats_text(r['final']):<22}  {_delta_text(r):>8}  "
                         f"{_pending_text(r)}")
    return "\n".join(lines)


# ── cost and time to accuracy (bench_cost) ───────────────────────────────────────────────────────────────────
def _spent_text(stats: Stats, seeds: int, fmt: Callable[[float, float], str]) -> str:
    """"mean ± std", with the number of seeds only when some finished seed did not record it (— when none did)."""
    mean, std, n = stats
    if not n:
        return DASH
    return f"{fmt(mean, mean)} ± {fmt(std, mean)}" + (f" ({n})" if n != seeds else "")


def _ratio(x: float, like: float) -> str:
    return f"{x:.2f}"


def _seconds(x: float, like: float) -> str:
    return format_seconds(x)


COST_COLUMNS = (("selection_per_training", "selection per training generation", _ratio),
                ("selection_tokens", "generated tokens: selection", format_count),
                ("training_tokens", "generated tokens: training", format_count),
                ("fb_selection", "forward+backward tokens: selection", format_count),
                ("fb_training", "forward+backward tokens: training", format_count),
                *((f"time_{k}", f"{k} s", _seconds) for k in COST_TIMES))


def cost_cells(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cell rows) of a regime's cost table: mean ± std over the finished seeds."""
    header = ["method", "seeds", *(head for _, head, _ in COST_COLUMNS)]
    body = [[r["method"], str(r["seeds"]), *(_spent_text(r[k], r["seeds"], fmt) for k, _, fmt in COST_COLUMNS)]
            for r in rows]
    return header, body


def _axis_value(axis: str, x: float | None, like: float | None = None) -> str:
    return format_seconds(x) if axis == "seconds" else format_count(x, like)


def _crossing_text(axis: str, c: dict) -> str:
    """"mean ± std (reached/seeds)" of the cost at the lasting crossing."""
    if not c["seeds"]:
        return DASH
    mean, std, _ = c["cost"]
    if not c["reached"]:
        return f"{DASH} (0/{c['seeds']})"
    return f"{_axis_value(axis, mean)} ± {_axis_value(axis, std, mean)} ({c['reached']}/{c['seeds']})"


def time_to_accuracy_cells(tta: dict) -> tuple[list[str], list[list[str]]]:
    """(header, cell rows) of a regime's time-to-accuracy table: per reference target, the cost to reach it for
    good per seed and on the seed-mean curve; then the accuracy at each budget method's total cost."""
    header = ["method"]
    for ref, target in tta["targets"].items():
        header += [f"s to {ref} ({target:.3f})", f"tokens to {ref}", f"mean curve to {ref}: s / tokens"]
    budgets = [(b, axis, cost) for b, costs in tta["budgets"].items() for axis, cost in costs.items()
               if cost is not None]
    header += [f"accuracy at {b}'s {AXES[axis]} ({_axis_value(axis, cost)}{' s' if axis == 'seconds' else ''})"
               for b, axis, cost in budgets]
    body = []
    for r in tta["rows"]:
        cells = [r["method"]]
        for ref in tta["targets"]:
            to = r["to"][ref]
            cells += [_crossing_text(axis, to[axis]) for axis in AXES]
            cells.append(" / ".join(_axis_value(axis, to[axis]["on_mean"]) for axis in AXES))
        cells += [_stats_text(r["at_budget"][b][axis]) for b, axis, _ in budgets]
        body.append(cells)
    return header, body
