"""Reports from fabricated run directories: table numbers, summary.md, the PNG, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gradalign.reports import (find_runs, format_table, load_run, markdown_table, method_rows, plot_runs, report,
                               write_summary)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(path: Path, method: str, accs: list[float], shares: list[float | None], *, initial: float = 0.30,
             scenario: str = "unreliable-rewards", by_source: bool = True, zero_variance: list[int] | None = None,
             fallback_round: int | None = None) -> Path:
    path.mkdir(parents=True)
    config = {"output_dir": str(path), "seed": 0, "scenario": scenario, "corrupt_fraction": 0.5, "model_name_or_path": "tiny",
              "method": method, "chunk_size": 64, "selection_ratio": 8, "rollouts_per_problem": 8,
              "rounds": len(accs), "steps_per_round": 4, "problems_per_step": 8, "learning_rate": 1e-4}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    src = lambda a: {"add": a + 0.1, "copy": a - 0.1} if by_source else {"add": a}  # noqa: E731
    (path / "initial.json").write_text(json.dumps({"accuracy": initial, "by_source": src(initial), "n": 64}))
    rows = []
    for r, (acc, share) in enumerate(zip(accs, shares)):
        row = {"round": r, "step": (r + 1) * 4, "method": method, "candidates": 64, "selected_count": 8,
               "selected_ids": [f"p{i}" for i in range(8)], "selected_by_source": {"add": 8},
               "selected_corrupted_share": share,
               "train": {"loss": 0.1, "reward": 0.5, "reward_std": 0.3, "frac_reward_zero_std": 0.2},
               "test": {"accuracy": acc, "by_source": src(acc), "n": 64},
               "timings": {"training": 10.0, "evaluation": 1.0, "total": 20.0},
               "fallback": "random" if r == fallback_round else None}
        if method != "full":
            row["timings"].update(rollouts=5.0, validation_rollouts=1.0, scoring=2.0, selection=0.5)
            row["zero_variance"] = (zero_variance or [10] * len(accs))[r]
            row["pass_rate"] = {"mean": 0.5, "min": 0.0, "max": 1.0, "std": 0.3}
        rows.append(row)
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"round": r["round"], "step": r["step"],
                                                            "test_accuracy": r["test"]["accuracy"]}) + "\n"
                                                for r in rows))
    return path


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    d = tmp_path / "demo"
    make_run(d / "accgreedy", "accgreedy", [0.31, 0.29, 0.28], [0.84, 0.91, 0.88])
    make_run(d / "random", "random", [0.33, 0.36, 0.38], [0.50, 0.47, 0.53])
    make_run(d / "gradalign", "gradalign", [0.35, 0.41, 0.455], [0.22, 0.31, 0.28], zero_variance=[12, 9, 6],
             fallback_round=1)
    (d / "not-a-run").mkdir()
    return d


def test_find_runs_orders_gradalign_first(demo: Path):
    runs = find_runs(demo)
    assert [r.name for r in runs] == ["gradalign", "accgreedy", "random"]
    assert [r.method for r in runs] == ["gradalign", "accgreedy", "random"]
    assert find_runs(demo / "random")[0].name == "random"  # a run directory itself
    assert len(load_run(demo / "gradalign").rounds) == 3


def test_method_rows_numbers(demo: Path):
    rows = {r["method"]: r for r in method_rows(find_runs(demo))}
    g = rows["gradalign"]
    assert g["before"] == pytest.approx(0.30) and g["after"] == pytest.approx(0.455)
    assert g["best"] == pytest.approx(0.455) and g["delta"] == pytest.approx(0.155)
    assert g["corrupted_shares"] == [0.22, 0.31, 0.28]
    assert g["corrupted_mean"] == pytest.approx((0.22 + 0.31 + 0.28) / 3)  # 0.27
    assert g["zero_variance_mean"] == pytest.approx(9.0)
    assert g["steps"] == 12
    assert g["time_rollouts"] == pytest.approx(3 * 6.0)
    assert g["time_scoring"] == pytest.approx(3 * 2.5)
    assert g["time_training"] == pytest.approx(30.0) and g["time_total"] == pytest.approx(60.0)
    assert rows["accgreedy"]["best"] == pytest.approx(0.31) and rows["accgreedy"]["delta"] == pytest.approx(-0.02)
    assert rows["accgreedy"]["corrupted_mean"] == pytest.approx((0.84 + 0.91 + 0.88) / 3)  # 0.8767


def test_terminal_table(demo: Path):
    table = format_table(method_rows(find_runs(demo)))
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    body = {line.split()[0]: line for line in lines[3:]}
    assert list(body) == ["gradalign", "accgreedy", "random"]
    assert "0.300 → 0.455" in body["gradalign"] and "+0.155" in body["gradalign"]
    assert "0.22 0.31 0.28" in body["gradalign"] and " 0.27 " in body["gradalign"]
    assert "0.84 0.91 0.88" in body["accgreedy"] and " 0.88 " in body["accgreedy"]
    assert "0.300 → 0.380" in body["random"] and " 0.50 " in body["random"]
    assert "18.0" in body["gradalign"] and "60.0" in body["gradalign"]


def test_many_rounds_still_fit(tmp_path: Path):
    n = 30
    run = make_run(tmp_path / "a-very-long-method-name", "a-very-long-method-name", [0.4] * n, [0.25] * n)
    table = format_table(method_rows([load_run(run)]))
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "…" in table


def test_report_writes_summary_and_png(demo: Path):
    table = report(demo)
    assert "gradalign" in table and "accgreedy" in table and "random" in table
    png = demo / "accuracy.png"
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    summary = (demo / "summary.md").read_text()
    assert "![" in summary and "(accuracy.png)" in summary
    assert markdown_table(method_rows(find_runs(demo))) in summary
    assert "unreliable-rewards" in summary and "floor(64/8) = 8" in summary and "k_r = 8" in summary
    assert "4 GRPO steps × 8 problems per step" in summary
    assert "## Test accuracy by source" in summary and "copy (before → after)" in summary
    assert "coin flips" in summary and ">80%" in summary
    assert "round 1 used the no-direction fallback (random)" in summary
    assert not list(demo.glob(".*.tmp"))  # atomic writes left nothing behind


def set_code(run: Path, codes: list[str | None]) -> None:
    """Record, per round, the source fingerprint it ran (None: a round from before fingerprints were kept)."""
    rows = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    for row, code in zip(rows, codes):
        row.pop("code", None) if code is None else row.update(code=code)
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_says_which_code_the_runs_ran(demo: Path):
    report(demo)
    assert "**code**" not in (demo / "summary.md").read_text()  # recorded by none: nothing to say
    for name in ("accgreedy", "random", "gradalign"):
        set_code(demo / name, ["a" * 12] * 3)
    report(demo)
    assert "- **code**: source aaaaaaaaaaaa (3 runs)\n" in (demo / "summary.md").read_text()
    set_code(demo / "random", ["a" * 12, "b" * 12, None])  # resumed on other code: counted under each
    report(demo)
    assert ("- **code**: the runs ran 2 versions of the source: aaaaaaaaaaaa (3 runs), bbbbbbbbbbbb (1 run), "
            "not recorded (1 run, run before fingerprints were kept); a difference between methods may be a "
            "difference between versions\n") in (demo / "summary.md").read_text()


def test_run_without_corrupted_shares(tmp_path: Path):
    d = tmp_path / "clean"
    make_run(d / "gradalign", "gradalign", [0.4, 0.5], [None, None], scenario="imbalance", by_source=False)
    make_run(d / "full", "full", [0.35, 0.45], [None, None], scenario="imbalance", by_source=False)
    runs = find_runs(d)
    rows = method_rows(runs)
    assert all(r["corrupted_mean"] is None and r["corrupted_shares"] == [] for r in rows)
    full = next(r for r in rows if r["method"] == "full")
    assert full["time_rollouts"] is None and full["zero_variance_mean"] is None
    table = format_table(rows)
    assert "—" in next(line for line in table.splitlines() if line.startswith("full"))
    assert "| — |" in markdown_table(rows)

    from matplotlib.image import imread
    png = plot_runs(runs, d / "plot.png")
    height, width = imread(str(png)).shape[:2]
    assert width < 1.6 * height  # one panel (the two-panel figure is about 2.5 : 1)
    write_summary(d, runs, plot_path=d / "plots" / "x.png", notes=["a note"])
    summary = (d / "summary.md").read_text()
    assert "(plots/x.png)" in summary and "- a note" in summary
    assert "by source" not in summary  # one source only


def test_two_panels_when_shares(demo: Path):
    from matplotlib.image import imread
    png = plot_runs(find_runs(demo), demo / "p.png")
    height, width = imread(str(png)).shape[:2]
    assert width > 2 * height


@pytest.mark.parametrize("name, content, expect", [
    ("rounds.jsonl", '{"round": 0, "step": 4, "test": {"accuracy": 0.4}}\n{"round": 1, "st', "line 2"),
    ("rounds.jsonl", "[1, 2]\n", "line 1"),
    ("initial.json", "{not json", "not valid JSON"),
    ("config.yaml", "method: [unclosed\n", "not valid YAML"),
])
def test_garbled_files_one_line_error(tmp_path: Path, name: str, content: str, expect: str):
    run = make_run(tmp_path / "gradalign", "gradalign", [0.4], [0.2])
    (run / name).write_text(content)
    with pytest.raises(ValueError) as info:
        load_run(run)
    msg = str(info.value)
    assert "\n" not in msg and str(run / name) in msg and expect in msg
    with pytest.raises(ValueError, match="rounds.jsonl" if name == "rounds.jsonl" else name):
        report(tmp_path)


def test_missing_files(tmp_path: Path):
    run = make_run(tmp_path / "r", "random", [0.4], [0.5])
    (run / "initial.json").unlink()
    with pytest.raises(ValueError, match="initial.json: missing"):
        load_run(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: no run directories \(rounds.jsonl\) found"):
        find_runs(empty)


def test_summary_shows_selected_composition_and_offpolicy_fidelity(tmp_path: Path):
    d = tmp_path / "demo"
    make_run(d / "random", "random", [0.33, 0.36], [None, None], scenario="imbalance")
    cropi = make_run(d / "cropi", "cropi", [0.35, 0.40], [None, None], scenario="imbalance")
    rows = [json.loads(line) for line in (cropi / "rounds.jsonl").read_text().splitlines()]
    rows[0]["selected_by_source"] = {"sub": 6, "add": 2}
    rows[1]["selected_by_source"] = {"sub": 7, "add": 1}  # mean shares: sub (6/8 + 7/8) / 2, add (2/8 + 1/8) / 2
    rows[0]["offpolicy"] = {"problems": 12, "cosine_mean": 0.81, "cosine_median": 0.9,
                            "share_cosine_above_0.6": 0.75, "selection_overlap": 0.25}
    rows[1]["offpolicy"] = {"problems": 0, "cosine_mean": None, "cosine_median": None,
                            "share_cosine_above_0.6": None, "selection_overlap": None}
    (cropi / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report(d)
    text = (d / "summary.md").read_text()
    assert "| cropi | 0.19 | 0.81 |" in text
    assert "| random | 1.00 | 0.00 |" in text
    assert "| cropi | 0 | 12 | 0.81 | 0.90 | 0.75 | 0.25 |" in text
    assert "| cropi | 1 | 0 | — | — | — | — |" in text


# ── selection diagnostics (record["diagnostics"]) and the score distributions (scores/round-NNN.csv) ─────────
def diag(auc, top, selected, eligible=0.5, label="corrupted", ranked=True, corr=0.1):
    """A round's `diagnostics` as selection/diagnostics.py writes it."""
    figures = {"eligible_good_share": eligible, "auc": auc, "top_good_share": top, "selected_good_share": selected,
               "selected_pass_rate": {"good": 0.5, "bad": None}, "eligible_pass_rate": {"good": 0.5, "bad": 0.4}}
    return {"eligible": 60, "ranked": ranked, "labels": {label: figures},
            "label_free": {"score_std": 0.2 if ranked else 0.0, "positive_share": 0.6 if ranked else None,
                           "pass_rate_corr": corr if ranked else None, "length_corr": None}}


def add_diagnostics(run: Path, diags: list[dict]) -> None:
    rows = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    for row, d in zip(rows, diags):
        row["diagnostics"] = d
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def add_scores(run: Path, r: int, scores: list[float], corrupted: list[bool | str], sources: list[str] | None = None,
               utility: list[str] | None = None, eligible: list[bool] | None = None) -> None:
    """scores/round-NNN.csv as the curriculum writes it (SCORE_COLUMNS): ineligible candidates have no rank."""
    from gradalign.selection.diagnostics import write_scores
    n = len(scores)
    eligible = eligible or [True] * n
    order = sorted((i for i in range(n) if eligible[i]), key=lambda i: -scores[i])
    rank = {i: k + 1 for k, i in enumerate(order)}
    (run / "scores").mkdir(exist_ok=True)
    write_scores(run / "scores" / f"round-{r:03d}.csv",
                 [{"id": f"p{i}", "pass_rate": 0.5, "learnability": 0.25, "completion_length": 7.0,
                   "zero_variance": not eligible[i], "score": scores[i], "rank": rank.get(i, ""),
                   "selected": rank.get(i, 99) <= 4, "source": (sources or ["add"] * n)[i],
                   "corrupted": corrupted[i], "utility": (utility or [""] * n)[i]} for i in range(n)])


def test_summary_and_terminal_show_selection_diagnostics(demo: Path):
    g, rnd = demo / "gradalign", demo / "random"
    add_diagnostics(g, [diag(0.80, 0.70, 0.75, corr=-0.3), diag(None, 0.80, 0.65, corr=None),
                        diag(0.90, 0.90, 0.95, eligible=0.4, corr=0.1)])
    add_diagnostics(rnd, [diag(None, None, s, ranked=False) for s in (0.50, 0.45, 0.52)])
    # accgreedy: recorded before diagnostics existed, no scores files: left out, no error
    add_scores(g, 0, [0.9, 0.8, 0.7, 0.6, 0.1, 0.0, -0.1, 0.5], [False] * 4 + [True] * 4,
               eligible=[True] * 7 + [False])
    add_scores(rnd, 0, [0.0] * 8, [False, True] * 4)  # a uniform draw: one score for all, no panel
    table = report(demo)

    auc, top, sel = (0.80 + 0.90) / 2, (0.70 + 0.80 + 0.90) / 3, (0.75 + 0.65 + 0.95) / 3  # nulls ignored
    eligible, corr = (0.5 + 0.5 + 0.4) / 3, (-0.3 + 0.1) / 2
    summary = (demo / "summary.md").read_text()
    assert "## Selection diagnostics" in summary
    assert ("| method | corrupted: eligible good | corrupted: AUC | corrupted: top-k good | corrupted: selected good "
            "| score std | positive share | ρ(score, pass rate) | ρ(score, length) |") in summary
    assert (f"| gradalign | {eligible:.2f} | {auc:.2f} | {top:.2f} | {sel:.2f} | 0.2 | 0.60 | {corr:+.2f} | — |"
            in summary)
    assert f"| random | 0.50 | — | — | {(0.50 + 0.45 + 0.52) / 3:.2f} | 0 | — | — | — |" in summary
    assert "| accgreedy |" not in summary.split("## Selection diagnostics")[1].split("##")[0]
    assert "(scores.png)" in summary
    data = (demo / "scores.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000

    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "selection diagnostics, mean over rounds (corrupted: good = clean reward;" in table
    g_line = next(line for line in lines if line.startswith("  gradalign"))
    assert f"AUC {auc:.2f}  good share: top-k {top:.2f}  selected {sel:.2f}  eligible {eligible:.2f}" in g_line
    assert g_line.endswith(f"ρ {corr:+.2f}")
    assert "AUC    —" in next(line for line in lines if line.startswith("  random"))
    assert not any(line.startswith("  accgreedy") for line in lines)


def test_old_run_directories_report_without_diagnostics(demo: Path):
    table = report(demo)
    summary = (demo / "summary.md").read_text()
    assert "Selection diagnostics" not in summary and "scores.png" not in summary
    assert not (demo / "scores.png").exists() and "selection diagnostics" not in table


def test_score_split_labels_and_uniform_rounds(tmp_path: Path):
    from gradalign.reports.plots import plot_score_distributions, score_split
    run = make_run(tmp_path / "imb" / "gradalign", "gradalign", [0.4, 0.5], [None, None], scenario="imbalance")
    (run / "problems").mkdir()
    (run / "problems" / "validation.jsonl").write_text(json.dumps({"id": "v0", "prompt": "1-1", "answer": "0",
                                                                   "source": "sub"}) + "\n")
    add_scores(run, 0, [0.9, 0.7, 0.2, 0.1], [""] * 4, sources=["sub", "sub", "add", "add"])
    add_scores(run, 1, [0.3] * 4, [""] * 4, sources=["sub", "add", "add", "add"])  # equal scores: left out
    label, good, bad = score_split(load_run(run))
    assert label == "target" and sorted(good) == [0.7, 0.9] and sorted(bad) == [0.1, 0.2]
    assert score_split(load_run(run), validation_sources=[]) is None  # no target sources: no label
    low = make_run(tmp_path / "low" / "cropi", "cropi", [0.4], [None], scenario="low-utility")
    add_scores(low, 0, [0.5, 0.4, 0.3], [""] * 3, utility=["useful", "trivial", "unsolvable"])
    label, good, bad = score_split(load_run(low))
    assert label == "utility" and list(good) == [0.5] and sorted(bad) == [0.3, 0.4]
    png = plot_score_distributions([load_run(run), load_run(low)], tmp_path / "s.png")
    assert png is not None and png.read_bytes()[:8] == PNG_MAGIC
    old = make_run(tmp_path / "old", "random", [0.4], [0.5])
    assert plot_score_distributions([load_run(old)], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
