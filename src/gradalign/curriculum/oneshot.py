"""One-shot selection (LearnAlign's mode, METHODS.md §2; any registry method works): score a whole pool once with
one policy, keep the top n, and write the subset plus a per-problem scores table.

The curriculum's round is the same computation on one chunk (`RoundSelector.select`); staged LearnAlign is the
curriculum with the chunk set to the whole pool.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fileio
from ..config import RunConfig
from ..data.io import save_problems
from ..data.problem import Problem
from ..data.regimes import Scenario
from ..selection import get_method
from ..selection.diagnostics import scores_table, write_scores
from .offline import offline_influence
from .records import count_values
from .round import RoundSelection, RoundSelector
from .setup import check_inputs, join_processes, load_problem_sets, load_run_policy, make_reward, round_seed

log = logging.getLogger(__name__)


@dataclass
class OneShotResult:
    selected: list[Problem]
    table: list[dict]  # one row per pool problem, in pool order (SCORE_COLUMNS)
    selection: RoundSelection
    seconds: float


def pool_scores(pool: list[Problem], sel: RoundSelection) -> list[dict]:
    """The scores table of a whole-pool selection (`selection.diagnostics.SCORE_COLUMNS`)."""
    c = sel.candidates
    return scores_table(pool, c.pass_rate, c.completion_length, c.zero_variance, sel.scores, sel.ranking, sel.selected)


def select_once(cfg: RunConfig, n: int, sets: Scenario | None = None) -> OneShotResult:
    """Score every problem of the pool with the config's model (after a warm-up for LearnAlign) and keep the top `n`.

    CROPI's offline stores go to `cfg.offline_rollouts` / `cfg.offline_validation`, by default under
    `cfg.output_dir` (the command line puts that beside the output file).
    """
    cfg.check_with_trl()  # LearnAlign's warm-up trains with TRL
    sets = sets or load_problem_sets(cfg)
    if not get_method(cfg.method).needs_rollouts:
        raise ValueError(f"method '{cfg.method}' trains on the whole pool; there is nothing to select")
    if not 1 <= n <= len(sets.pool):
        raise ValueError(f"--n must be between 1 and the pool size ({len(sets.pool)}), got {n}")
    whole_pool = dataclasses.replace(cfg, chunk_size=len(sets.pool))
    check_inputs(whole_pool, sets)
    group = join_processes(whole_pool, sets)
    start = time.perf_counter()
    model, tokenizer = load_run_policy(cfg, sets, group)
    reward = make_reward(cfg)
    selector = RoundSelector(cfg, sets.validation, reward, pool=sets.pool, group=group)
    offline = None
    if "offline" in get_method(cfg.method).needs:  # one CROPI stage: stores sampled from this model (= β)
        offline = offline_influence(cfg, model, tokenizer, sets.pool, sets.validation, reward, collect=True,
                                    group=group)
    sel = selector.select(model, tokenizer, sets.pool, round_seed(cfg.seed, 0), keep=n, offline=offline)
    selected = [sets.pool[i] for i in sel.selected]
    return OneShotResult(selected, pool_scores(sets.pool, sel), sel, time.perf_counter() - start)


def write_selection(result: OneShotResult, out: str | Path, scores: str | Path, cfg: RunConfig) -> dict:
    """The selected subset (.jsonl / .parquet), the scores CSV and a JSON summary beside it; all atomic."""
    save_problems(out, result.selected)
    write_scores(scores, result.table)
    summary = {"method": cfg.method, "pool": len(result.table), "selected": len(result.selected),
               "composition": composition(result.selected), "timings": result.selection.timings,
               "warmup": result.selection.warmup, "seconds": round(result.seconds, 2),
               "selected_file": str(out), "scores_file": str(scores), "config": cfg.to_dict()}
    fileio.write_json(beside(out, ".summary.json"), summary)
    return summary


def beside(out: str | Path, suffix: str) -> Path:
    """selected.parquet -> selected<suffix> (the scores table and summary live next to the subset)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(out.suffix) + suffix)


def composition(problems: list[Problem]) -> dict:
    """What a selection is made of: counts by source and, where the pool marks it, the corrupted share."""
    out: dict = {"by_source": dict(sorted(count_values(p.source for p in problems).items()))}
    if any("corrupted" in p.metadata for p in problems):
        out["corrupted_share"] = float(np.mean([p.corrupted for p in problems]))
    return out
