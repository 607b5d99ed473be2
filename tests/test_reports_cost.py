"""Cost in the reports: the ledger figures of a run (summary, terminal), and a benchmark's cost table and time to
accuracy, on round records fabricated here whose numbers are computed by hand in the comments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gradalign.reports import bench_report, format_cost_table, method_rows, find_runs, report
from gradalign.reports.bench_cost import cost_rows, longer_references, time_to_accuracy
from gradalign.reports.bench_views import load_bench
from gradalign.reports.cost import accuracy_at_cost, cost_curve, lasting_crossing, run_cost
from test_bench_report import PNG_MAGIC, make_cell
from test_bench_report import bench as old_bench  # noqa: F401  (a benchmark recorded before the ledger)
from test_reports import make_run


def ledger(candidates=(0, 0), validation=(0, 0), warmup=(0, 0), training=(0, 0), reused=(0, 0),
           scoring_fb=0, warmup_fb=0, training_fb=0) -> dict:
    """A round's `cost` as curriculum/ledger.py writes it; each phase as (completions, tokens)."""
    phases = {"candidates": candidates, "validation": validation, "warmup": warmup, "offline": (0, 0),
              "training": training}
    return {"generated": {p: {"completions": c, "tokens": t} for p, (c, t) in phases.items()},
            "reused": {"completions": reused[0], "tokens": reused[1]},
            "forward_backward_tokens": {"scoring": scoring_fb, "warmup": warmup_fb, "training": training_fb}}


def set_rounds(cell: Path, **fields) -> None:
    """Give every round of a run directory the same `fields` (e.g. cost=..., timings=...)."""
    path = cell / "rounds.jsonl"
    rows = [json.loads(line) | fields for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def truncate(cell: Path, rounds: int) -> None:
    """A running cell: only its first `rounds` rounds recorded."""
    path = cell / "rounds.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:rounds]))


# per round: z selects (512 candidates + 128 validation completions, 32 reused by training, which generates 96 more)
Z_COST = ledger(candidates=(512, 2000), validation=(128, 500), training=(96, 300), reused=(32, 100),
                scoring_fb=5000, training_fb=1200)
FULL_COST = ledger(training=(256, 1000), training_fb=3000)
RANDOM_COST = ledger(training=(128, 400), training_fb=1200)
# cost seconds per round (evaluation excluded): z 6 + 3 + 1 + 10 = 20 (25 with evaluation), full 30, random 10
Z_T = {"rollouts": 6.0, "scoring": 3.0, "selection": 1.0, "training": 10.0, "evaluation": 5.0, "total": 25.0}
FULL_T = {"training": 30.0, "evaluation": 2.0, "total": 32.0}
RANDOM_T = {"training": 10.0, "evaluation": 2.0, "total": 12.0}
Z = "gradalign-z@batch"


# ── one run ──────────────────────────────────────────────────────────────────────────────────────────────────
def test_lasting_crossing_needs_the_curve_to_stay_above():
    assert lasting_crossing([0.30, 0.46, 0.44, 0.47], 0.45) == 3  # round 1 crossed, round 2 fell back: not yet
    assert lasting_crossing([0.30, 0.40, 0.46, 0.48], 0.45) == 2
    assert lasting_crossing([0.30, 0.46, 0.47, 0.44], 0.45) is None  # ends below: never reached
    assert lasting_crossing([0.50, 0.46, 0.47], 0.45) == 1  # the untrained policy (index 0) never counts
    assert lasting_crossing([0.50, 0.40], 0.45) is None
    assert lasting_crossing([0.3, float("nan")], 0.2) is None  # no test set: no accuracy to reach with
    target = float(np.mean([0.1, 0.2, 0.3]))  # 0.20000000000000004: a tie by float noise still counts
    assert lasting_crossing([0.0, 0.1, 0.2], target) == 2


def test_accuracy_at_cost_interpolates_and_keeps_a_cheaper_runs_final():
    costs, accs = [0.0, 10.0, 30.0], [0.3, 0.4, 0.6]
    assert accuracy_at_cost(costs, accs, 20.0) == pytest.approx(0.5)  # halfway between rounds 1 and 2
    assert accuracy_at_cost(costs, accs, 10.0) == pytest.approx(0.4)
    assert accuracy_at_cost(costs, accs, 0.0) == pytest.approx(0.3)
    assert accuracy_at_cost(costs, accs, 45.0) == pytest.approx(0.6)  # ended cheaper: its final


def test_run_cost_and_curves_from_records():
    rounds = [{"timings": Z_T, "cost": Z_COST}, {"timings": Z_T, "cost": Z_COST}]
    cost = run_cost(rounds)
    # selection: 2 × (512 + 128 − 32) = 1216; training consumed 2 × (96 + 32) = 256; ratio 1216 / 256 = 4.75
    assert cost["selection_completions"] == 1216 and cost["training_completions"] == 256
    assert cost["reused_completions"] == 64 and cost["selection_per_training"] == pytest.approx(4.75)
    # tokens: selection 2 × (2000 + 500 − 100) = 4800, training 2 × (300 + 100) = 800: together all 2 × 2800
    assert (cost["selection_tokens"], cost["training_tokens"], cost["generated_tokens"]) == (4800, 800, 5600)
    assert (cost["fb_selection"], cost["fb_training"]) == (10000, 2400)
    assert run_cost([{**rounds[0], "cost": FULL_COST}])["selection_per_training"] == 0.0  # generates none to select
    assert cost_curve(rounds, "seconds") == [0.0, 20.0, 40.0]  # evaluation (5 s a round) is not a cost
    assert cost_curve(rounds, "tokens") == [0.0, 2800.0, 5600.0]
    old = [{"timings": Z_T}, {"timings": Z_T}]  # recorded before the ledger existed
    assert run_cost(old) is None and cost_curve(old, "tokens") is None
    assert cost_curve(old, "seconds") == [0.0, 20.0, 40.0]  # wall time is still known
    assert cost_curve([rounds[0], old[0]], "tokens") is None  # one round without a ledger: no token curve


# ── summary.md and the terminal (demo, run) ──────────────────────────────────────────────────────────────────
def test_summary_and_terminal_show_the_ledger(tmp_path: Path):
    d = tmp_path / "demo"
    for name, cost in ((Z, Z_COST), ("random", RANDOM_COST)):
        run = make_run(d / name, name, [0.35, 0.40, 0.45], [0.2, 0.3, 0.3])
        set_rounds(run, cost=cost)
    old = make_run(d / "accgreedy", "accgreedy", [0.31, 0.29, 0.28], [0.84, 0.91, 0.88])  # no ledger
    rows = {r["method"]: r for r in method_rows(find_runs(d))}
    assert rows["accgreedy"]["cost"] is None
    assert rows[Z]["cost"]["selection_completions"] == 3 * 608

    table = report(d)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    start = lines.index("cost ledger, summed over rounds")
    assert "completions" in lines[start + 1] and "generated tokens" in lines[start + 1]
    assert lines[start + 2].split() == ["method", "selection", "training", "reused", "sel/train", "selection",
                                       "training", "selection", "training"]
    body = {line.split()[0]: line.split()[1:] for line in lines[start + 4:start + 7]}
    # z, 3 rounds: 1824 selection, 384 training (96 reused), 4.75; tokens 7200 / 1200; forward+backward 15000 / 3600
    assert body[Z] == ["1.8k", "384", "96", "4.75", "7.2k", "1.2k", "15.0k", "3.6k"]
    assert body["random"] == ["0", "384", "0", "0.00", "0", "1.2k", "0", "3.6k"]
    assert body["accgreedy"] == ["—"] * 8
    assert lines[start + 7].startswith("selection: generated only to choose problems")

    summary = (d / "summary.md").read_text()
    assert ("| method | completions: selection | completions: training | completions: reused | selection per training "
            "| generated tokens: selection | generated tokens: training | forward+backward tokens: selection "
            "| forward+backward tokens: training |") in summary
    assert f"| {Z} | 1.8k | 384 | 96 | 4.75 | 7.2k | 1.2k | 15.0k | 3.6k |" in summary
    assert "| accgreedy | — | — | — | — | — | — | — | — |" in summary

    # a directory recorded before the ledger: no cost table at all, the rest unchanged
    for run in (d / Z, d / "random"):
        set_rounds(run, cost=None)
    assert "cost ledger" not in report(d) and "## Cost" not in (d / "summary.md").read_text()
    assert format_cost_table(method_rows([*find_runs(d)])) == "" and old.is_dir()


def test_terminal_cost_table_fits_with_long_names(tmp_path: Path):
    run = make_run(tmp_path / "r", "a-very-long-method-name@batch-and-more", [0.4] * 3, [0.2] * 3)
    set_rounds(run, cost=ledger(candidates=(123456789, 987654321), training=(5, 7)))
    table = format_cost_table(method_rows(find_runs(run)))
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "370.37M" in table and "2.96G" in table  # 3 × 123456789 completions, 3 × 987654321 tokens


# ── a benchmark: one regime, random / full / z, seeds 0-2, 3 rounds of 4 GRPO steps ──────────────────────────
FULL_ACCS = [[0.40, 0.42, 0.44], [0.38, 0.43, 0.46], [0.41, 0.43, 0.45]]  # finals 0.44 0.46 0.45: target 0.45
RANDOM_ACCS = [[0.32, 0.34, 0.36], [0.33, 0.35, 0.34], [0.34, 0.36, 0.38]]  # finals 0.36 0.34 0.38: target 0.36
Z_ACCS = [[0.46, 0.44, 0.47],  # crosses full's 0.45 in round 1, falls back, reaches it for good in round 3
          [0.40, 0.46, 0.48],  # reaches it in round 2
          [0.43, 0.44, 0.44]]  # never reaches it


@pytest.fixture
def cost_bench(tmp_path: Path) -> Path:
    out = tmp_path / "bench"
    reg = out / "unreliable-rewards"
    reg.mkdir(parents=True)
    (out / "bench.json").write_text(json.dumps({"preset": "standard", "regimes": ["unreliable-rewards"],
                                                "methods": [Z, "random", "full"], "seeds": [0, 1, 2]}))
    (reg / "regime.json").write_text(json.dumps({"regime": "unreliable-rewards", "target_sources": []}))
    for method, accs, timings, cost in ((Z, Z_ACCS, Z_T, Z_COST), ("random", RANDOM_ACCS, RANDOM_T, RANDOM_COST),
                                        ("full", FULL_ACCS, FULL_T, FULL_COST)):
        for s, a in enumerate(accs):
            cell = reg / method / f"seed-{s}"
            make_cell(cell, method, s, a, [{"add": 8}], 8, timings)
            set_rounds(cell, cost=cost)
    return out


def _tta(bench_dir: Path) -> tuple[dict, dict]:
    regime = load_bench(bench_dir).regimes["unreliable-rewards"]
    tta = time_to_accuracy(regime, [Z, "random", "full"])
    return tta, {r["method"]: r for r in tta["rows"]}


def test_time_to_accuracy_numbers(cost_bench: Path):
    tta, rows = _tta(cost_bench)
    assert tta["targets"] == pytest.approx({"full": 0.45, "random": 0.36})
    assert list(tta["targets"]) == ["full", "random"]
    # full: 30 s and 1000 tokens a round → 90 s, 3000 tokens; random 30 s, 1200 tokens
    assert tta["budgets"] == {"full": pytest.approx({"seconds": 90.0, "tokens": 3000.0})}
    assert tta["totals"]["random"]["seconds"] == pytest.approx((30.0, 0.0, 3))

    z = rows[Z]["to"]["full"]
    # seed 0 at round 3 (60 s, 8400 tokens: not round 1, it fell back), seed 1 at round 2 (40 s, 5600), seed 2 never
    assert (z["seconds"]["reached"], z["seconds"]["seeds"]) == (2, 3)
    assert z["seconds"]["cost"] == pytest.approx((50.0, math.sqrt(200.0), 2))  # std of 60, 40: sqrt(2·10²/1)
    assert z["tokens"]["cost"] == pytest.approx((7000.0, math.sqrt(2 * 1400.0 ** 2), 2))
    # seed-mean curve: 0.43, 0.4467, 0.4633 per round: at or above 0.45 from round 3 (mean cost 60 s, 8400 tokens)
    assert z["seconds"]["on_mean"] == pytest.approx(60.0) and z["tokens"]["on_mean"] == pytest.approx(8400.0)
    to_random = rows[Z]["to"]["random"]["seconds"]
    assert to_random["cost"] == pytest.approx((20.0, 0.0, 3)) and to_random["on_mean"] == pytest.approx(20.0)
    never = rows["random"]["to"]["full"]["seconds"]  # random's best is 0.38
    assert (never["reached"], never["seeds"], never["cost"][2], never["on_mean"]) == (0, 3, 0, None)
    # random seed 1 ends at 0.34 below its own mean 0.36: 2 of 3 seeds reach it (round 3: 30 s; round 2: 20 s)
    own = rows["random"]["to"]["random"]["seconds"]
    assert own["reached"] == 2 and own["cost"][0] == pytest.approx(25.0)

    # at full's 90 s z's runs have ended (60 s): their finals 0.47, 0.48, 0.44
    assert rows[Z]["at_budget"]["full"]["seconds"] == pytest.approx((np.mean([0.47, 0.48, 0.44]),
                                                                     np.std([0.47, 0.48, 0.44], ddof=1), 3))
    # at full's 3000 tokens: 1/14 of the way from round 1 (2800 tokens) to round 2 (5600)
    at_tokens = [a1 + (a2 - a1) / 14 for a1, a2, _ in Z_ACCS]
    assert at_tokens[1] == pytest.approx(0.40 + 0.06 / 14)
    assert rows[Z]["at_budget"]["full"]["tokens"] == pytest.approx((np.mean(at_tokens), np.std(at_tokens, ddof=1), 3))
    assert rows["random"]["at_budget"]["full"]["seconds"][0] == pytest.approx(0.36)  # 30 s < 90 s: its finals
    # seed by seed: every full seed costs 90 s and 3000 tokens, so each seed's own budget is the mean's; the
    # differences are taken from that seed's full final (0.44, 0.46, 0.45), not from their mean
    full_finals = np.array([a[-1] for a in FULL_ACCS])
    for axis, at in (("seconds", np.array([0.47, 0.48, 0.44])), ("tokens", np.array(at_tokens))):
        d = at - full_finals
        assert rows[Z]["at_own_budget"]["full"][axis] == pytest.approx((d.mean(), d.std(ddof=1), 3))
    assert rows["full"]["at_own_budget"]["full"]["seconds"] == pytest.approx((0.0, 0.0, 3))

    costs = {r["method"]: r for r in cost_rows(load_bench(cost_bench).regimes["unreliable-rewards"],
                                               [Z, "random", "full"])}
    assert costs[Z]["selection_per_training"] == pytest.approx((4.75, 0.0, 3))
    assert costs[Z]["selection_tokens"][0] == 7200 and costs["full"]["selection_per_training"][0] == 0.0
    assert costs[Z]["time_scoring"] == pytest.approx((12.0, 0.0, 3))  # 3 × (scoring 3 + selection 1)


def test_report_cost_tables_and_verdicts(cost_bench: Path):
    md = bench_report(cost_bench).read_text()
    assert "stays at or above the target to its last round" in md  # the crossing rule, said once
    assert ("| method | seeds | selection per training generation | generated tokens: selection | generated tokens: "
            "training | forward+backward tokens: selection | forward+backward tokens: training | rollouts s | "
            "scoring s | training s |") in md
    assert f"| {Z} | 3 | 4.75 ± 0.00 | 7.2k ± 0.0k | 1.2k ± 0.0k | 15.0k ± 0.0k | 3.6k ± 0.0k | 18.0 ± 0.0 | " \
           "12.0 ± 0.0 | 30.0 ± 0.0 |" in md
    assert "| full | 3 | 0.00 ± 0.00 | 0 ± 0 | 3.0k ± 0.0k | 0 ± 0 | 9.0k ± 0.0k | — | — | 90.0 ± 0.0 |" in md

    assert ("| method | s to full (0.450) | tokens to full | mean curve to full: s / tokens | s to random (0.360) "
            "| tokens to random | mean curve to random: s / tokens | accuracy at full's wall time (90.0 s) "
            "| accuracy at full's generated tokens (3.0k) |") in md
    std_tokens = math.sqrt(2) * 1400 / 1000
    assert (f"| {Z} | 50.0 ± 14.1 (2/3) | 7.0k ± {std_tokens:.1f}k (2/3) | 60.0 / 8.4k | 20.0 ± 0.0 (3/3) "
            f"| 2.8k ± 0.0k (3/3) | 20.0 / 2.8k | 0.463 ± 0.021 (3) |") in md
    assert "| random | — (0/3) | — (0/3) | — / — | 25.0 ± 7.1 (2/3) |" in md

    # z reaches full's target in 2 of 3 seeds: a share of full's cost, no verdict (the third has no cost)
    assert (f"- {Z} reaches full's final accuracy (0.450) for good in 2/3 seeds only, at 56% ± 16% of full's wall "
            f"time and 233% ± 66% of full's generated tokens where it does; 1 seed never stays at or above it, so "
            f"no verdict on its cost.") in md
    assert "- Never at or above full's final accuracy (0.450) to the end: random (0/3 seeds)." in md
    # random's target: z takes 20 s of random's 30 s, but 2800 of its 1200 tokens (std 0 on both sides: margin 0)
    assert (f"- {Z} reaches random's final accuracy (0.360) for good in 3/3 seeds, at 67% ± 0% of random's wall "
            f"time (less than random's, beyond the seed spread) and 233% ± 0% of random's generated tokens (more "
            f"than random's, beyond the seed spread).") in md
    assert ("- full reaches random's final accuracy (0.360) for good in 3/3 seeds, at 100% ± 0% of random's wall "
            "time (within the seed spread of random's) and 83% ± 0% of random's generated tokens (less than "
            "random's, beyond the seed spread).") in md
    # at full's cost: random's finals 0.36 ± 0.02 vs full's 0.45 ± 0.01, margin 2·sqrt((0.02² + 0.01²)/3) = 0.026
    assert ("- random at full's total cost (90.0 s, 3.0k tokens) vs full's final accuracy (0.450 ± 0.010): "
            "0.360 ± 0.020 by wall time (Δ -0.090, below it beyond the seed spread ±0.026); 0.360 ± 0.020 by "
            "generated tokens (Δ -0.090, below it beyond the seed spread ±0.026).") in md
    # z: 0.463 ± 0.021 by wall time, Δ +0.013 within 2·sqrt((0.0208² + 0.01²)/3) = 0.027
    assert (f"- {Z} at full's total cost (90.0 s, 3.0k tokens) vs full's final accuracy (0.450 ± 0.010): 0.463 ± "
            f"0.021 by wall time (Δ +0.013, no difference beyond the seed spread ±0.027);") in md
    # seed by seed: +0.03, +0.02, -0.01 at 90 s: mean 0.013, std 0.021, margin 2 · 0.0208 / √3 = 0.024
    assert ("Seed by seed (3 seeds both finished), at each seed's own full total cost against that seed's full "
            "final: wall time Δ +0.013 ± 0.021, within its spread ±0.024; generated tokens Δ ") in md
    assert "- full at full's total cost" not in md and "- full reaches full's" not in md

    assert "](plots/unreliable-rewards-cost.png)" in md
    from matplotlib.image import imread
    png = cost_bench / "plots" / "unreliable-rewards-cost.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    height, width = imread(str(png)).shape[:2]
    assert width > 2 * height  # two panels: wall time and generated tokens


# full@x2: plain GRPO for twice the rounds (6 × 30 s = 180 s, 6000 tokens), the equal-cost reference
LONG_ACCS = [[0.40, 0.42, 0.44, 0.43, 0.42, 0.41], [0.38, 0.43, 0.46, 0.45, 0.44, 0.43],
             [0.41, 0.43, 0.45, 0.44, 0.42, 0.42]]  # finals 0.41 0.43 0.42: target 0.42


def test_plain_grpo_run_longer_is_a_reference_and_a_budget(cost_bench: Path):
    reg = cost_bench / "unreliable-rewards"
    for s, accs in enumerate(LONG_ACCS):
        cell = reg / "full@x2" / f"seed-{s}"
        make_cell(cell, "full", s, accs, [{"add": 8}], 8, FULL_T)
        set_rounds(cell, cost=FULL_COST)
        (cell / "config.yaml").write_text((cell / "config.yaml").read_text().replace("rounds: 3", "rounds: 6"))
    settings = json.loads((cost_bench / "bench.json").read_text())
    (cost_bench / "bench.json").write_text(json.dumps({**settings, "methods": [*settings["methods"], "full@x2"]}))
    regime = load_bench(cost_bench).regimes["unreliable-rewards"]
    tta = time_to_accuracy(regime, [Z, "random", "full", "full@x2"])
    rows = {r["method"]: r for r in tta["rows"]}
    assert list(tta["targets"]) == ["full", "random", "full@x2"]
    assert tta["targets"]["full@x2"] == pytest.approx(0.42)
    assert tta["budgets"]["full@x2"] == pytest.approx({"seconds": 180.0, "tokens": 6000.0})
    # only plain GRPO run N >= 2 times as long is a reference, the longest last (10 after 3, not as text)
    assert longer_references(["full@x10", Z, "full@x1", "random@x2", "full@x3", "full@xx", "full"]) == [
        "full@x3", "full@x10"]
    # z stays at or above 0.42 from round 1 on seeds 0 and 2 (20 s) and from round 2 on seed 1 (40 s)
    z = rows[Z]["to"]["full@x2"]["seconds"]
    assert (z["reached"], z["seeds"]) == (3, 3) and z["cost"][0] == pytest.approx(80 / 3)
    # at full@x2's 180 s z (60 s) and full (90 s) have ended: their finals, against full@x2's 0.41, 0.43, 0.42
    long_finals = np.array([a[-1] for a in LONG_ACCS])
    for method, accs in ((Z, Z_ACCS), ("full", FULL_ACCS)):
        finals = np.array([a[-1] for a in accs])
        assert rows[method]["at_budget"]["full@x2"]["seconds"][0] == pytest.approx(finals.mean())
        d = finals - long_finals
        assert rows[method]["at_own_budget"]["full@x2"]["seconds"] == pytest.approx((d.mean(), d.std(ddof=1), 3))
    # full@x2 at full's 90 s: its round 3 (0.44, 0.46, 0.45), i.e. full's own finals (the same first rounds)
    assert rows["full@x2"]["at_budget"]["full"]["seconds"][0] == pytest.approx(0.45)

    md = bench_report(cost_bench).read_text()
    assert "| s to full@x2 (0.420) |" in md and "accuracy at full@x2's wall time (180.0 s)" in md
    assert f"- {Z} reaches full@x2's final accuracy (0.420) for good in 3/3 seeds, at 15% ± 6% of full@x2's wall " \
           "time" in md
    # z's finals 0.463 ± 0.021 vs 0.420 ± 0.010: margin 2·sqrt((0.0208² + 0.01²)/3) = 0.027; seed by seed +0.06,
    # +0.05, +0.02: 0.043 ± 0.021, margin 2 · 0.0208 / √3 = 0.024
    assert (f"- {Z} at full@x2's total cost (180.0 s, 6.0k tokens) vs full@x2's final accuracy (0.420 ± 0.010): "
            f"0.463 ± 0.021 by wall time (Δ +0.043, above it beyond the seed spread ±0.027)") in md
    assert ("Seed by seed (3 seeds both finished), at each seed's own full@x2 total cost against that seed's "
            "full@x2 final: wall time Δ +0.043 ± 0.021, beyond its spread ±0.024;") in md
    assert "- full@x2 at full@x2's total cost" not in md and "- full at full@x2's total cost" in md
    assert "arm **full@xN**" in md
    # the figure marks both budgets, full's 90 s and full@x2's 180 s (the same scale), dashed in each arm's colour
    from matplotlib.figure import Figure
    from gradalign.reports.bench_figures import _plot_accuracy_vs_cost, _styles
    methods = [Z, "random", "full", "full@x2"]
    styles, ax = _styles(methods, methods), Figure().subplots()
    _plot_accuracy_vs_cost(ax, regime, styles, "seconds", tta)
    dashed = {line.get_color(): line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"}
    assert len(dashed) == 2 and dashed[styles["full@x2"][0]] == pytest.approx(2 * dashed[styles["full"][0]])


def test_seeds_without_a_ledger_and_a_running_reference(cost_bench: Path):
    reg = cost_bench / "unreliable-rewards"
    set_rounds(reg / Z / "seed-0", cost=None)  # recorded before the ledger: no tokens, wall time still counts
    tta, rows = _tta(cost_bench)
    z = rows[Z]["to"]["full"]
    assert (z["seconds"]["reached"], z["seconds"]["seeds"]) == (2, 3)
    assert (z["tokens"]["reached"], z["tokens"]["seeds"]) == (1, 2)  # seed 1 only (seed 2 never reaches)
    md = bench_report(cost_bench).read_text()
    assert f"| {Z} | 3 | 4.75 ± 0.00 (2) | 7.2k ± 0.0k (2) |" in md  # 2 of the 3 finished seeds have a ledger
    assert "and 187% of full's generated tokens (1/2 seeds) where it does" in md  # 5600 / 3000, one seed: no ±

    for s in range(3):  # full still running (2 of 3 rounds): no full target, no budget, the rest still reported
        truncate(reg / "full" / f"seed-{s}", 2)
    tta, rows = _tta(cost_bench)
    assert list(tta["targets"]) == ["random"] and tta["budgets"] == {"full": {"seconds": None, "tokens": None}}
    md = bench_report(cost_bench).read_text()
    assert "| s to full" not in md and "| accuracy at full's" not in md and f"- {Z} at full's total cost" not in md
    assert "| s to random (0.360) |" in md

    for s in range(3):  # no reference finished: the cost table, nothing to time against
        truncate(reg / "random" / f"seed-{s}", 2)
    md = bench_report(cost_bench).read_text()
    assert f"| {Z} | 3 | 4.75 ± 0.00 (2) |" in md and "| s to random" not in md
    assert "**Time to accuracy** (unreliable-rewards): no reference (full, random, nonzero-variance) has finished seeds yet." in md
    for s in range(3):  # nothing finished: no cost tables at all, the figure of the rounds so far still shown
        truncate(reg / Z / f"seed-{s}", 2)
    md = bench_report(cost_bench).read_text()
    assert "**Cost**" not in md.split("## Regime:")[1] and "](plots/unreliable-rewards-cost.png)" in md


def test_a_benchmark_recorded_before_the_ledger(old_bench: Path):
    md = bench_report(old_bench).read_text()
    section = md.split("## Regime: imbalance")[1].split("## Regime:")[0]
    # random 16.5 s a round (rollouts 5, scoring 1, selection 0.5, training 10); the table's tokens are dashes
    assert "| random | 3 | — | — | — | — | — | 15.0 ± 0.0 | 4.5 ± 0.0 | 30.0 ± 0.0 |" in section
    # random's target 0.370: seed 1 from round 2 (33 s), seed 2 at round 3 (49.5 s), seed 0 ends at 0.36; the
    # seed-mean curve (0.320, 0.353, 0.370) at round 3 (49.5 s). Full's 0.410: never.
    assert "| random | — (0/3) | — | — / — | 41.2 ± 11.7 (2/3) | — | 49.5 / — |" in section
    from matplotlib.image import imread
    height, width = imread(str(old_bench / "plots" / "imbalance-cost.png")).shape[:2]
    assert width < 1.6 * height  # the wall-time panel only: no cell can count tokens
