"""`gradalign bench scoring` end to end on the tiny model: rows, ratios, memory and correct numbers."""

import json

import torch

from gradalign.cli import main


def test_scoring_bench_smoke(tmp_path, capsys):
    out = tmp_path / "results" / "scoring.json"
    backends = ["naive", "func", "onepass"]
    assert main(["bench", "scoring", "--models", "tiny", "--chunks", "8", "--k", "2", "--repeats", "1",
                 "--backends", ",".join(backends), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["threads"] == 1 and result["machine"]["torch"] == torch.__version__
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["floor"] + backends
    for method, row in rows.items():
        assert row["status"] == "ok", row
        assert row["model"] == "tiny" and row["chunk"] == 8 and row["completions"] == 16
        assert row["seconds"] > 0 and row["x_floor"] > 0
        if result["memory"]["method"] != "unavailable":
            assert row["peak_mb"] is not None and row["peak_mb"] >= 0
        if method != "floor":
            assert row["max_rel_err"] < 1e-4, row
    assert rows["floor"]["x_floor"] == 1.0 and rows["naive"]["max_rel_err"] == 0.0
    table = capsys.readouterr().out
    assert "x floor" in table and "max rel err" in table and "func" in table


def test_naive_skipped_on_big_chunks(tmp_path):
    out = tmp_path / "s.json"
    assert main(["bench", "scoring", "--models", "tiny", "--chunks", "4", "--k", "2", "--repeats", "1",
                 "--backends", "naive", "--max-naive-chunk", "2", "--memory", "none", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["naive"]["status"].startswith("skipped") and rows["naive"]["seconds"] is None
    assert rows["floor"]["peak_mb"] is None


def test_forward_rows_on_long_prompts_are_checked_against_naive_and_the_floor(tmp_path):
    out = tmp_path / "f.json"
    assert main(["bench", "scoring", "--models", "tiny", "--chunks", "4", "--k", "3", "--repeats", "1",
                 "--backends", "naive,forward,forward-floor", "--prompt-tokens", "20,30", "--memory", "none",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["prompt_tokens"] == [20, 30]
    rows = {r["method"]: r for r in result["rows"]}
    for method in ("forward", "forward-floor"):
        assert rows[method]["status"] == "ok" and rows[method]["seconds"] > 0, rows[method]
        assert rows[method]["max_rel_err"] is not None and rows[method]["max_rel_err"] < 1e-4, rows[method]
    assert rows["forward"]["norm_rel_err"] == 0.0  # it forms no norms: only its dots are compared


def test_prompt_lengths_out_of_order_are_refused_in_one_line(capsys):
    assert main(["bench", "scoring", "--models", "tiny", "--chunks", "4", "--prompt-tokens", "9,3",
                 "--memory", "none"]) != 0
    err = capsys.readouterr().err.strip()
    assert err == "gradalign: error: --prompt-tokens 9,3: need 1 <= LO <= HI (lengths with BOS)"
