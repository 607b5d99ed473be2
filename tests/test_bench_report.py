"""Regimes-benchmark report: the metrics on hand-made curves, and report.md / report.html from a fabricated
benchmark directory whose table numbers and verdicts are computed by hand in the comments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from gradalign.reports import bench_report
from gradalign.curriculum.records import time_split
from gradalign.reports.bench_stats import beyond_spread, composition, mean_curve, seed_stats, steps_to_threshold
from gradalign.reports.benchmark import format_bench_table, load_bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROUNDS, STEPS_PER_ROUND = 3, 4  # curves at GRPO steps 0, 4, 8, 12


# ── metrics ──────────────────────────────────────────────────────────────────────────────────────────────────
def test_seed_stats():
    assert seed_stats([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0, 3))  # ddof=1: var = (1 + 0 + 1) / 2
    mean, std, n = seed_stats([1.0, float("nan"), 3.0, None])
    assert (mean, n) == (2.0, 2) and std == pytest.approx(math.sqrt(2))
    assert seed_stats([0.5]) == (0.5, 0.0, 1)
    mean, std, n = seed_stats([float("nan")])
    assert math.isnan(mean) and (std, n) == (0.0, 0)


def test_steps_to_threshold():
    steps, accs = [0, 4, 8, 12], [0.5, 0.3, 0.4, 0.6]
    assert steps_to_threshold(steps, accs, 0.45) == 12  # step 0 (before training) never counts
    assert steps_to_threshold(steps, accs, 0.3) == 4  # reached at the first step, by a tie
    assert steps_to_threshold(steps, accs, 0.7) is None
    threshold = float(np.mean([0.1, 0.2, 0.3]))
    assert threshold > 0.2  # float noise: 0.20000000000000004
    assert steps_to_threshold([0, 4, 8], [0.1, 0.2, 0.3], threshold) == 4  # still a tie


def test_mean_curve_stops_where_a_seed_stops():
    curves = [([0, 4, 8], [0.3, 0.5, 0.7]), ([0, 4, 8], [0.3, 0.3, 0.5]), ([0, 4], [0.3, 0.4])]
    steps, mean, std = mean_curve(curves)
    assert steps.tolist() == [0, 4]
    assert mean == pytest.approx([0.3, 0.4]) and std == pytest.approx([0.0, 0.1])
    assert all(a.size == 0 for a in mean_curve([]))


def test_beyond_spread():
    a, b = (0.50, 0.01, 3), (0.40, 0.01, 3)  # margin 2·sqrt(2·0.0001/3) = 0.0163 < 0.10
    assert beyond_spread(a, b) and beyond_spread(b, a)
    assert not beyond_spread((0.42, 0.05, 3), (0.40, 0.05, 3))  # margin 0.0816 > 0.02
    assert not beyond_spread((0.90, 0.0, 1), (0.10, 0.0, 3))  # one seed cannot show a difference
    assert not beyond_spread((0.4, 0.0, 2), (0.4, 0.0, 2))  # strict: no difference, no verdict


def test_composition_per_regime_kind():
    unreliable = {"round": 0, "selected_count": 8, "selected_by_source": {"add": 8},
                  "selected_corrupted_share": 0.25, "selected_by_utility": None}
    imbalance = {"round": 1, "selected_count": 8, "selected_by_source": {"sub": 2, "add": 6},
                 "selected_corrupted_share": None, "selected_by_utility": None}
    low_utility = {"round": 2, "selected_count": 8, "selected_by_source": {"add": 4, "trivial": 3, "hard": 1},
                   "selected_corrupted_share": None,
                   "selected_by_utility": {"useful": 4, "trivial": 3, "unsolvable": 1}}
    rows = composition([unreliable, low_utility], ["add", "sub"])  # useful sources: add, sub
    assert rows[0] == {"round": 0, "corrupted": 0.25, "target": 1.0, "useful": None, "trivial": None,
                       "unsolvable": None}
    assert (rows[1]["useful"], rows[1]["trivial"], rows[1]["unsolvable"]) == (0.5, 0.375, 0.125)
    assert rows[1]["target"] == 0.5 and rows[1]["corrupted"] is None
    target_only = composition([imbalance], ["sub"])[0]  # the target task: sub
    assert target_only["target"] == 0.25 and target_only["corrupted"] is None and target_only["trivial"] is None
    assert composition([imbalance], [])[0]["target"] is None  # no target sources: no target share
    empty = composition([{**imbalance, "selected_count": 0, "selected_by_source": {}}], ["sub"])[0]
    assert all(empty[k] is None for k in ("target", "corrupted", "useful", "trivial", "unsolvable"))


def test_each_regime_plots_the_share_of_its_own_bad_problems():
    from gradalign.bench.regimes import REAL_MODEL_REGIMES, REGIMES
    from gradalign.reports.bench_figures import plotted_share_key
    from gradalign.reports.bench_views import RegimeView
    expected = {"unreliable-rewards": "corrupted", "mixed": "corrupted", "imbalance": "target", "low-utility": "wasted"}
    for kind in REGIMES:
        assert plotted_share_key(RegimeView(kind, kind, [], {}, {})) == expected[kind], kind
    real = {"smollm2-coin": "corrupted", "smollm2-skewed": "target", "gsm-symbolic": "corrupted"}
    for kind in REAL_MODEL_REGIMES:
        assert plotted_share_key(RegimeView(kind, kind, [], {}, {})) == real[kind], kind
    assert plotted_share_key(RegimeView("mine", "mine", [], {}, {})) is None  # unknown kind, no runs: no panel


def test_time_split():
    rounds = [{"timings": {"rollouts": 5.0, "validation_rollouts": 1.0, "scoring": 2.0, "selection": 0.5,
                           "warmup": 3.0, "training": 10.0, "evaluation": 1.0, "total": 22.5}},
              {"timings": {"rollouts": 4.0, "scoring": 1.0, "training": 11.0, "evaluation": 2.0, "total": 18.0}}]
    assert time_split(rounds) == {"rollouts": 10.0, "scoring": 6.5, "training": 21.0, "evaluation": 3.0,
                                  "total": 40.5}
    full = time_split([{"timings": {"training": 10.0, "evaluation": 1.0, "total": 11.0}}])
    assert full["rollouts"] is None and full["scoring"] is None and full["total"] == 11.0


# ── a fabricated benchmark directory ─────────────────────────────────────────────────────────────────────────
def make_cell(path: Path, method: str, seed: int, accs: list[float], by_source: list[dict], count: int,
              timings: dict, by_utility: dict | None = None, initial: float = 0.30) -> None:
    """A run directory like the curriculum writes; `by_source` per round (the last entry repeats)."""
    path.mkdir(parents=True)
    config = {"method": method, "seed": seed, "model_name_or_path": "tiny", "rounds": ROUNDS, "steps_per_round": STEPS_PER_ROUND,
              "problems_per_step": 8, "chunk_size": 64, "selection_ratio": 8}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "initial.json").write_text(json.dumps({"accuracy": initial, "by_source": {}}))
    rows = [{"round": r, "step": (r + 1) * STEPS_PER_ROUND, "method": method, "selected_count": count,
             "selected_by_source": by_source[min(r, len(by_source) - 1)], "selected_corrupted_share": None,
             "selected_by_utility": by_utility, "test": {"accuracy": acc, "by_source": {}}, "timings": timings}
            for r, acc in enumerate(accs)]
    (path / "rounds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


RANDOM_T = {"rollouts": 5.0, "scoring": 1.0, "selection": 0.5, "training": 10.0, "evaluation": 2.0, "total": 20.0}
FULL_T = {"training": 30.0, "evaluation": 2.0, "total": 32.0}
GRAD_T = {"rollouts": 5.0, "validation_rollouts": 3.0, "scoring": 4.0, "selection": 1.0, "training": 10.0,
          "evaluation": 2.0, "total": 25.0}


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.json").write_text(json.dumps({"preset": "quick", "regimes": ["imbalance", "low-utility"],
                                                "methods": ["random", "full", "gradalign"], "seeds": [0, 1, 2],
                                                "config": {"pool_size": 256}}))
    imb = out / "imbalance"
    imb.mkdir()
    (imb / "regime.json").write_text(json.dumps({"regime": "imbalance", "target_sources": ["sub"]}))
    for s, accs in enumerate([[0.32, 0.34, 0.36], [0.33, 0.37, 0.38], [0.31, 0.35, 0.37]]):
        make_cell(imb / "random" / f"seed-{s}", "random", s, accs, [{"sub": 2, "add": 6}], 8, RANDOM_T)
    for s, accs in enumerate([[0.36, 0.39, 0.40], [0.38, 0.41, 0.42], [0.37, 0.40, 0.41]]):
        make_cell(imb / "full" / f"seed-{s}", "full", s, accs, [{"sub": 12, "add": 52}], 64, FULL_T)
    for s, accs in enumerate([[0.40, 0.43, 0.45], [0.42, 0.46, 0.47]]):  # seed 2 not started: pending
        make_cell(imb / "gradalign" / f"seed-{s}", "gradalign", s, accs,
                  [{"sub": 5, "add": 3}, {"sub": 6, "add": 2}, {"sub": 7, "add": 1}], 8, GRAD_T)

    low = out / "low-utility"
    low.mkdir()
    (low / "regime.json").write_text(json.dumps({"regime": "low-utility", "target_sources": ["add", "sub"]}))
    for s, accs in enumerate([[0.35, 0.38, 0.40], [0.36, 0.41, 0.44], [0.37, 0.40, 0.42]]):
        make_cell(low / "random" / f"seed-{s}", "random", s, accs, [{"add": 2, "sub": 2, "trivial": 2, "hard": 2}],
                  8, RANDOM_T, {"useful": 4, "trivial": 2, "unsolvable": 2})
    for s, accs in enumerate([[0.38, 0.41, 0.43], [0.40, 0.43, 0.45], [0.39, 0.42]]):  # seed 2 running
        make_cell(low / "full" / f"seed-{s}", "full", s, accs, [{"add": 8, "sub": 8, "trivial": 32, "hard": 16}],
                  64, FULL_T, {"useful": 16, "trivial": 32, "unsolvable": 16})
    for s, accs in enumerate([[0.39, 0.40, 0.42], [0.43, 0.46, 0.48], [0.41, 0.43, 0.45]]):
        make_cell(low / "gradalign" / f"seed-{s}", "gradalign", s, accs, [{"add": 3, "sub": 3, "trivial": 2}], 8,
                  GRAD_T, {"useful": 6, "trivial": 2, "unsolvable": 0})
    return out


def test_load_bench_counts_cells(bench: Path):
    (bench / "imbalance" / "gradalign" / "seed-2").mkdir()
    (bench / "imbalance" / "gradalign" / "seed-2" / "rounds.jsonl").write_text("\n")  # started, no round yet
    view = load_bench(bench)
    imb, low = view.regimes["imbalance"], view.regimes["low-utility"]
    assert imb.not_started == {"random": [], "full": [], "gradalign": [2]}
    assert sorted(imb.runs["gradalign"]) == [0, 1] and imb.target_sources == ["sub"]
    assert low.running("full") == [2] and len(low.finished("full")) == 2 and len(low.started("full")) == 3


def test_report_tables_verdicts_and_files(bench: Path):
    md_path = bench_report(bench)
    assert md_path == bench / "report.md"
    md = md_path.read_text()
    assert "**preset**: quick" in md and "**seeds**: 0, 1, 2" in md and "**overrides**: pool_size = 256" in md
    assert "3 rounds × 4 GRPO steps × 8 problems per step" in md
    assert "**cells**: 16 of 18 finished, 1 running, 1 not started" in md

    # imbalance: finals random 0.36/0.38/0.37, full 0.40/0.42/0.41, gradalign 0.45/0.47 (seed 2 pending).
    # Steps to random's 0.370: random seed 1 at 8, seed 2 at 12 (a tie); to full's 0.410: gradalign 8 and 4.
    # Times per seed = 3 rounds: random rollouts 15, scoring 3·1.5; gradalign rollouts 3·8, scoring 3·5.
    assert ("| method | final accuracy ± std (seeds) | Δ vs random | steps to random (0.370) | steps to full (0.410) "
            "| target share | rollouts s | scoring s | training s | evaluation s | total s | pending |") in md
    assert "| random | 0.370 ± 0.010 (3) | — | 10 (2/3) | — (0/3) | 0.25 | 15.0 | 4.5 | 30.0 | 6.0 | 60.0 | 0 |" in md
    assert "| full | 0.410 ± 0.010 (3) | +0.040 | 5.3 (3/3) | 10 (2/3) | 0.19 | — | — | 90.0 | 6.0 | 96.0 | 0 |" in md
    assert ("| gradalign | 0.460 ± 0.014 (2) | +0.090 | 4 (2/2) | 6 (2/2) | 0.75 | 24.0 | 15.0 | 30.0 | 6.0 | 75.0 "
            "| 1 |") in md
    # margins: full vs random 2·sqrt(2·0.01²/3) = 0.016; gradalign vs either 2·sqrt(0.014142²/2 + 0.01²/3) = 0.023
    assert "- full beats random: 0.410 vs 0.370 (Δ +0.040, beyond the seed spread ±0.016)." in md
    assert "- gradalign beats random: 0.460 vs 0.370 (Δ +0.090, beyond the seed spread ±0.023)." in md
    assert "- gradalign beats full: 0.460 vs 0.410 (Δ +0.050, beyond the seed spread ±0.023)." in md
    assert "random loses to full" not in md and "random vs full" not in md  # each pair once
    assert ("- Best: gradalign (0.460 ± 0.014, 2 seeds); its lead of +0.050 over full (0.410) is beyond the seed "
            "spread (±0.023).") in md

    # low-utility: full seed 2 is running (2 of 3 rounds), so full's finals are 0.43/0.45 only.
    assert "steps to random (0.420) | steps to full (0.440) | target share | trivial share | unsolvable share |" in md
    assert "| random | 0.420 ± 0.020 (3) | — | 12 (2/3) | 12 (1/3) | 0.50 | 0.25 | 0.25 |" in md
    assert "| full | 0.440 ± 0.014 (2) | +0.020 | 10 (2/2) | 12 (1/2) | 0.25 | 0.50 | 0.25 |" in md
    assert "| 1 (1 running) |" in md
    assert "| gradalign | 0.450 ± 0.030 (3) | +0.030 | 8 (3/3) | 10 (2/3) | 0.75 | 0.25 | 0.00 |" in md
    # margins: full vs random 2·sqrt(0.014142²/2 + 0.02²/3) = 0.031; gradalign vs random 2·sqrt((0.03² + 0.02²)/3)
    # = 0.042; gradalign vs full 2·sqrt(0.03²/3 + 0.014142²/2) = 0.040
    assert ("- full vs random: no difference beyond the seed spread (0.440 vs 0.420, Δ +0.020, spread ±0.031)."
            in md)
    assert ("- gradalign vs random: no difference beyond the seed spread (0.450 vs 0.420, Δ +0.030, spread ±0.042)."
            in md)
    assert ("- gradalign vs full: no difference beyond the seed spread (0.450 vs 0.440, Δ +0.010, spread ±0.040)."
            in md)
    assert ("- Best: gradalign (0.450 ± 0.030, 3 seeds); its lead of +0.010 over full (0.440) is not beyond the "
            "seed spread, so these seeds do not separate the two.") in md
    assert "corrupted share" not in md.split("## Regime: low-utility")[1]  # no corruption in this regime

    assert "](plots/imbalance.png)" in md and "](plots/low-utility.png)" in md and "## How to read this" in md
    for name in ("imbalance", "low-utility"):
        assert (bench / "plots" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    page = (bench / "report.html").read_text()
    # per regime: the results figure and the time-to-accuracy figure
    assert "<table" in page and page.count("data:image/png;base64,") == 4 and 'src="plots/' not in page
    assert "<td>0.460 ± 0.014 (2)</td>" in page and "<strong>preset</strong>: quick" in page
    assert not list(bench.rglob(".*.tmp"))  # atomic writes left nothing behind

    table = format_bench_table(load_bench(bench))
    assert "gradalign" in table and "0.460 ± 0.014 (2)" in table and "1 (1 running)" in table


def test_report_figure_has_three_panels(bench: Path):
    from matplotlib.image import imread

    bench_report(bench)
    height, width = imread(str(bench / "plots" / "imbalance.png")).shape[:2]
    assert width > 3 * height  # step, wall time and target-share panels side by side


@pytest.mark.parametrize("name, content, expect", [
    ("bench.json", '{"regimes": ["imbalance"], "meth', "not valid JSON"),
    ("bench.json", '{"regimes": ["imbalance"], "methods": ["random"], "seeds": [0, "1"]}', "'seeds'"),
    ("bench.json", '["imbalance"]', "expected a JSON object"),
    ("imbalance/regime.json", '{"regime": "imbalance", "target_sources": "sub"}', "target_sources"),
])
def test_malformed_settings_one_line_error(bench: Path, name: str, content: str, expect: str):
    (bench / name).write_text(content)
    with pytest.raises(ValueError) as info:
        bench_report(bench)
    msg = str(info.value)
    assert "\n" not in msg and str(bench / name) in msg and expect in msg


def test_missing_bench_json(tmp_path: Path):
    with pytest.raises(ValueError, match=r"bench.json: missing"):
        load_bench(tmp_path)


def test_extra_test_sets_get_a_forgetting_column(bench: Path):
    for method, finals in (("random", [0.5, 0.6, 0.7]), ("full", [0.2, 0.3, 0.4])):
        for s, acc in enumerate(finals):
            path = bench / "imbalance" / method / f"seed-{s}" / "rounds.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            rows[-1]["test"]["extra"] = {"other-tasks": {"accuracy": acc, "by_source": {}, "n": 16}}
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = bench_report(bench).read_text()
    assert "| other-tasks test (forgetting) |" in md
    assert "| random | 0.370 ± 0.010 (3) | — | 0.600 ± 0.100 (3) |" in md
    assert "| full | 0.410 ± 0.010 (3) | +0.040 | 0.300 ± 0.100 (3) |" in md
    assert "| gradalign | 0.460 ± 0.014 (2) | +0.090 | — |" in md  # no extra test recorded


# ── selection diagnostics (record["diagnostics"]) and score distributions (scores/round-NNN.csv) ─────────────
def _diag(auc, top, selected, eligible=0.25, corr=0.2, ranked=True) -> dict:
    figures = {"eligible_good_share": eligible, "auc": auc, "top_good_share": top, "selected_good_share": selected,
               "selected_pass_rate": {"good": None, "bad": None}, "eligible_pass_rate": {"good": 0.5, "bad": 0.5}}
    return {"eligible": 60, "ranked": ranked, "labels": {"target": figures},
            "label_free": {"score_std": 0.1 if ranked else 0.0, "positive_share": None,
                           "pass_rate_corr": corr if ranked else None, "length_corr": None}}


def _set_diagnostics(cell: Path, diags: list[dict]) -> None:
    path = cell / "rounds.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, d in zip(rows, diags):
        row["diagnostics"] = d
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_scores(cell: Path, scores: list[float], sources: list[str]) -> None:
    from gradalign.selection.diagnostics import SCORE_COLUMNS, write_scores
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    rank = {i: k + 1 for k, i in enumerate(order)}
    rows = [dict.fromkeys(SCORE_COLUMNS, "") | {"id": f"p{i}", "pass_rate": 0.5, "score": s, "rank": rank[i],
                                                "selected": rank[i] <= 2, "source": sources[i]}
            for i, s in enumerate(scores)]
    write_scores(cell / "scores" / "round-000.csv", rows)


def test_report_shows_selection_diagnostics(bench: Path):
    imb = bench / "imbalance"
    grad = {0: [_diag(0.70, 0.60, 0.625), _diag(0.80, 0.70, 0.75), _diag(0.90, 0.80, 0.875)],
            1: [_diag(0.60, 0.50, 0.625), _diag(None, 0.60, 0.75, corr=None), _diag(0.80, 0.70, 0.875, corr=0.4)]}
    for s, diags in grad.items():
        _set_diagnostics(imb / "gradalign" / f"seed-{s}", diags)
    for s in (0, 1):  # seed 2 was recorded before diagnostics existed: left out of the statistics
        _set_diagnostics(imb / "random" / f"seed-{s}", [_diag(None, None, 0.25 + 0.05 * s, ranked=False)] * ROUNDS)
    _write_scores(imb / "gradalign" / "seed-0", [0.9, 0.8, 0.3, 0.2, 0.1, -0.1], ["sub", "sub", "add", "sub", "add",
                                                                                   "add"])
    _write_scores(imb / "random" / "seed-0", [0.0] * 6, ["sub", "add"] * 3)  # a uniform draw: no panel
    md = bench_report(bench).read_text()

    # per seed the mean over rounds (nulls ignored), then mean ± std (ddof=1) over the finished seeds
    def stats(key, signed=False):
        def pick(d):
            return d["label_free"]["pass_rate_corr"] if key == "corr" else d["labels"]["target"][key]
        per_seed = [np.mean([pick(d) for d in diags if pick(d) is not None]) for diags in grad.values()]
        return f"{np.mean(per_seed):{'+' if signed else ''}.2f} ± {np.std(per_seed, ddof=1):.2f} (2)"

    section = md.split("## Regime: imbalance")[1].split("## Regime:")[0]
    assert "**Selection diagnostics** (label `target`: good = from a validation source)" in section
    assert ("| method | eligible good share | AUC (good vs bad) | top-k good share | selected good share "
            "| ρ(score, pass rate) |") in section
    assert (f"| gradalign | 0.25 ± 0.00 (2) | {stats('auc')} | {stats('top_good_share')} | "
            f"{stats('selected_good_share')} | {stats('corr', signed=True)} |") in section
    assert stats("auc") == "0.75 ± 0.07 (2)"  # seeds 0.80 and 0.70
    assert "| random | 0.25 ± 0.00 (2) | — | — | 0.28 ± 0.04 (2) | — |" in section  # 0.25 and 0.30
    assert "| full | — | — | — | — | — |" in section  # no selection, no diagnostics
    assert "](plots/imbalance-scores.png)" in section
    png = bench / "plots" / "imbalance-scores.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000
    # low-utility has no diagnostics and no scores files (an older benchmark): no table, no figure
    assert "Selection diagnostics" not in md.split("## Regime: low-utility")[1]
    assert not (bench / "plots" / "low-utility-scores.png").exists()
    page = (bench / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "<td>0.75 ± 0.07 (2)</td>" in page  # 2 × 2 + scores
    assert "<strong>Selection diagnostics</strong>" in page


def test_verdicts_measure_against_nonzero_variance_and_the_published_method():
    """Any rollout-based filter drops zero-variance problems, so every method is also compared with
    nonzero-variance; a method beyond the paper is compared with the published GradAlign."""
    from gradalign.reports.bench_verdicts import regime_verdict
    rows = [{"method": m, "final": stats} for m, stats in [
        ("gradalign", (0.40, 0.01, 5)), ("gradalign-z", (0.50, 0.01, 5)), ("nonzero-variance", (0.45, 0.01, 5))]]
    lines = regime_verdict(rows)
    assert any(line.startswith("gradalign-z beats nonzero-variance: 0.500 vs 0.450") for line in lines)
    assert any(line.startswith("gradalign loses to nonzero-variance") for line in lines)
    assert any(line.startswith("gradalign-z beats gradalign: 0.500 vs 0.400") for line in lines)
    assert len(lines) == 4  # three pairs, each once, then the best-method line


def test_seed_by_seed_comparison_leaves_out_what_a_seed_changes_for_both():
    """Each seed is one data set for every arm: differences per seed can show what the means' spread hides, over
    the seeds both finished only (seed 3 has no partner)."""
    from gradalign.reports.bench_stats import paired_stats
    from gradalign.reports.bench_verdicts import regime_verdict
    a = {0: 0.50, 1: 0.70, 2: 0.60, 3: 0.90}
    b = {0: 0.45, 1: 0.66, 2: 0.54}
    d = paired_stats(a, b)
    assert d[2] == 3 and d[0] == pytest.approx(0.05) and d[1] == pytest.approx(0.01)
    rows = [{"method": "gradalign", "final": seed_stats(a.values()), "by_seed": a},
            {"method": "random", "final": seed_stats(b.values()), "by_seed": b}]
    line = regime_verdict(rows)[0]
    # means 0.675 ± 0.171 (4) vs 0.550 ± 0.105 (3): margin 2·sqrt(0.171²/4 + 0.105²/3) = 0.214; paired 2·0.01/√3
    assert line.startswith("gradalign vs random: no difference beyond the seed spread (0.675 vs 0.550")
    assert line.endswith("Seed by seed (3 seeds both finished, each on its own data): Δ +0.050 ± 0.010, beyond its "
                         "spread ±0.012.")
    b[1] = 0.80  # one seed the other way (differences +0.05, −0.10, +0.06): they scatter, and the verdict says so
    rows[1]["final"] = seed_stats(b.values())
    assert regime_verdict(rows)[0].endswith("Δ +0.003 ± 0.090, within its spread ±0.103.")
    assert "Seed by seed" not in regime_verdict([dict(r, by_seed={0: 0.5}) for r in rows])[0]  # one common seed


def test_report_compares_seed_by_seed(bench: Path):
    md = bench_report(bench).read_text()
    # imbalance: full − random is +0.040 on each of seeds 0-2
    assert ("- full beats random: 0.410 vs 0.370 (Δ +0.040, beyond the seed spread ±0.016). Seed by seed (3 seeds "
            "both finished, each on its own data): Δ +0.040 ± 0.000, beyond its spread ±0.000.") in md
    assert "**seed by seed**" in md


def set_code(cell: Path, codes: list[str | None]) -> None:
    """Rewrite a cell's rounds as run by the given source fingerprints, one per round (None: none recorded)."""
    path = cell / "rounds.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, code in zip(rows, codes):
        row.pop("code", None) if code is None else row.update(code=code)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_report_says_which_code_the_cells_ran(bench: Path):
    cells = sorted(p.parent for p in bench.rglob("rounds.jsonl"))  # 17 started: 16 finished, 1 running
    assert len(cells) == 17
    assert "**code**" not in bench_report(bench).read_text()  # recorded by none: nothing to say
    for cell in cells:
        set_code(cell, ["a" * 12] * ROUNDS)
    assert "- **code**: source aaaaaaaaaaaa (17 cells)\n" in bench_report(bench).read_text()
    set_code(cells[0], [None] * ROUNDS)
    assert ("- **code**: source aaaaaaaaaaaa (16 cells), not recorded (1 cell, run before fingerprints were kept)\n"
            in bench_report(bench).read_text())
    set_code(cells[1], ["a" * 12, "b" * 12, "b" * 12])  # resumed on other code: counted under both
    set_code(cells[2], ["b" * 12] * ROUNDS)
    assert ("- **code**: the cells ran 2 versions of the source: aaaaaaaaaaaa (15 cells), bbbbbbbbbbbb (2 cells), "
            "not recorded (1 cell, run before fingerprints were kept); a difference between methods may be a "
            "difference between versions\n") in bench_report(bench).read_text()
