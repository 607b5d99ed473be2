"""The tables of a benchmark report as text cells: a regime's results and diagnostics (header + rows, rendered to
Markdown or HTML by `blocks`), and the terminal summary `format_bench_table`."""

from __future__ import annotations

import math
from typing import Sequence

from .bench_stats import DIAGNOSTIC_COLUMNS, REFERENCES, SHARES, TIMES, Stats, regime_rows
from .bench_views import BenchView
from .summary import DASH, format_delta, format_seconds, format_share


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
