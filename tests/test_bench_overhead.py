"""`gradalign bench overhead`: the per-round selection overhead is computed from the rounds' recorded timings (hand-made
records against hand-computed ratios), one-time costs stay out of the per-round figures, and the command runs the
real curriculum end to end, one run directory per method."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import yaml

from gradalign.bench import overhead
from gradalign.cli import main
from gradalign.curriculum.records import read_rounds

# Round 0 of a CROPI-like run that also warms up (every part non-zero): the loop adds the one-time offline rollouts to
# round 0's total. Parts 2 + 1 + 3 + 4 + 0.5 (selection) + 5 (training) + 1 (evaluation) = 16.5, plus 0.5 of other.
ROUND0 = {"round": 0, "step": 1, "test": {"accuracy": 0.2},
          "timings": {"warmup": 3.0, "rollouts": 2.0, "validation_rollouts": 1.0, "scoring": 4.0, "selection": 0.5,
                      "training": 5.0, "evaluation": 1.0, "offline_rollouts": 10.0, "total": 27.0}}
ROUND1 = {"round": 1, "step": 2, "test": {"accuracy": 0.3},
          "timings": {"warmup": 2.0, "rollouts": 1.0, "validation_rollouts": 1.0, "scoring": 2.0, "selection": 0.0,
                      "training": 3.0, "evaluation": 1.0, "offpolicy_check": 0.25, "total": 10.5}}
# random: no validation rollouts, no scoring, no warm-up
RANDOM = {"round": 0, "step": 1, "test": {"accuracy": 0.1},
          "timings": {"rollouts": 0.6, "selection": 0.2, "training": 4.0, "evaluation": 0.5, "total": 5.4}}


def test_round_ratios_come_from_the_recorded_timings():
    row = overhead.round_row(ROUND0)
    s, x = row["seconds"], row["x_training"]
    assert s["overhead"] == pytest.approx(2 + 1 + 3 + 4 + 0.5)  # warm-up counted, one-time offline rollouts not
    assert row["overhead"] == pytest.approx(10.5 / 5)
    assert s["round"] == pytest.approx(17.0)  # the total less the one-time cost
    assert s["other"] == pytest.approx(0.5)
    assert row["one_time"] == {"offline_rollouts": 10.0}
    assert x["candidate_rollouts"] == pytest.approx(2 / 5) and x["validation_rollouts"] == pytest.approx(1 / 5)
    assert x["warmup"] == pytest.approx(3 / 5) and x["scoring"] == pytest.approx(4 / 5)
    assert x["selection"] == pytest.approx(0.5 / 5) and x["evaluation"] == pytest.approx(1 / 5)
    assert x["training"] == pytest.approx(1.0) and x["round"] == pytest.approx(17 / 5)
    # an unlisted timing (CROPI's optional off-policy check) is no selection cost: it lands in "other"
    row1 = overhead.round_row(ROUND1)
    assert row1["overhead"] == pytest.approx(6 / 3) and row1["one_time"] == {}
    assert row1["seconds"]["other"] == pytest.approx(10.5 - 10.0)


def test_methods_that_do_not_score_have_zero_scoring():
    row = overhead.round_row(RANDOM)
    assert row["seconds"]["scoring"] == 0 and row["seconds"]["validation_rollouts"] == 0
    assert row["seconds"]["warmup"] == 0
    assert row["overhead"] == pytest.approx((0.6 + 0.2) / 4.0)


def test_mean_over_rounds_and_one_time_costs():
    row = overhead.method_row("cropi", [ROUND0, ROUND1])
    mean = row["mean"]
    assert [r["round"] for r in row["rounds"]] == [0, 1]
    assert mean["seconds"]["training"] == pytest.approx(4.0) and mean["seconds"]["overhead"] == pytest.approx(8.25)
    assert row["overhead"] == pytest.approx(8.25 / 4.0)  # ratio of the means (2.0625), not the mean of 2.1 and 2.0
    assert mean["x_training"]["scoring"] == pytest.approx(3.0 / 4.0)
    assert mean["x_training"]["warmup"] == pytest.approx(2.5 / 4.0)
    assert mean["seconds"]["round"] == pytest.approx((17.0 + 10.5) / 2)
    assert row["one_time"] == {"offline_rollouts": 10.0}
    assert row["one_time_x_training"] == pytest.approx(10.0 / 4.0)
    assert row["overhead_with_one_time"] == pytest.approx((8.25 + 10.0 / 2) / 4.0)
    assert row["test_accuracy"] == 0.3
    # no training time: no ratio (None), not a division error
    untrained = overhead.round_row({**RANDOM, "timings": {**RANDOM["timings"], "training": 0.0}})
    assert untrained["overhead"] is None and untrained["x_training"]["scoring"] is None


def test_every_selection_timing_has_a_column():
    keys = set(overhead.selection_keys())
    assert keys == {"rollouts", "validation_rollouts", "warmup", "scoring", "selection"}
    assert keys <= {key for _, key in overhead.PARTS}
    assert not keys & set(overhead.ONE_TIME)


def test_table_shows_mean_and_every_round_and_the_one_time_cost():
    text = overhead.table([overhead.method_row("cropi", [ROUND0, ROUND1]), overhead.method_row("random", [RANDOM])])
    lines = text.splitlines()
    cropi = next(line for line in lines if line.startswith("cropi") and "×" not in line)
    assert cropi.split()[:3] == ["cropi", "mean", "8.25"]
    assert any(line.startswith("cropi") and "2.06×" in line for line in lines)
    assert "offline rollouts 10.00 s (2.50× a round's training" in text and "3.31×" in text


def test_rounds_default_sits_under_the_yaml(tmp_path):
    parser = argparse.ArgumentParser()
    overhead.add_overhead_arguments(parser)
    assert overhead.config_from_args(parser.parse_args([])).rounds == overhead.ROUNDS
    config = tmp_path / "c.yaml"
    config.write_text("rounds: 3\n")
    assert overhead.config_from_args(parser.parse_args(["--config", str(config)])).rounds == 3
    assert overhead.config_from_args(parser.parse_args(["--config", str(config), "--rounds", "1"])).rounds == 1
    cfg = overhead.config_from_args(parser.parse_args(["--chunk-size", "32", "--seed", "4"]))
    assert (cfg.chunk_size, cfg.seed, cfg.output_dir) == (32, 4, "runs/bench-overhead")


def test_help_prints(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "overhead", "--help"])
    assert done.value.code == 0 and "--output-dir" in capsys.readouterr().out


def test_bad_methods_are_one_line_errors(tmp_path, capsys):
    assert main(["bench", "overhead", "--methods", "random,full", "--output-dir", str(tmp_path / "r"),
                 "--out", str(tmp_path / "o.json")]) == 2
    assert "'full' selects nothing" in capsys.readouterr().err
    assert main(["bench", "overhead", "--methods", "nope", "--output-dir", str(tmp_path / "r")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


TINY = dict(pool_size=32, validation_size=8, test_size=8, chunk_size=16, selection_ratio=4, rollouts_per_problem=4,
            validation_rollouts=4, steps_per_round=1, problems_per_step=4, num_generations=4, eval_samples=0,
            rollout_batch=16)


def test_cli_runs_each_method_into_its_own_directory(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))  # num_generations is TRL's: given through the YAML
    runs, out = tmp_path / "runs", tmp_path / "overhead.json"
    argv = ["bench", "overhead", "--methods", "random,gradalign", "--rounds", "1", "--config", str(config),
            "--output-dir", str(runs), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [row["method"] for row in result["results"]] == ["random", "gradalign"]
    assert result["rounds"] == 1 and result["config"]["chunk_size"] == 16 and "cpu_count" in result["machine"]
    for row in result["results"]:
        assert len(row["rounds"]) == 1
        training = row["mean"]["seconds"]["training"]
        assert math.isfinite(training) and training > 0
        # the figures are the run's own recorded timings
        timings = read_rounds(runs / row["method"] / "rounds.jsonl")[0]["timings"]
        assert training == pytest.approx(timings["training"])
        assert row["overhead"] == pytest.approx(sum(timings.get(k, 0.0) for k in overhead.selection_keys())
                                                / timings["training"])
        assert row["one_time"] == {}
        assert any(line.startswith(row["method"]) for line in printed.splitlines())
    random, gradalign = result["results"]
    assert random["mean"]["seconds"]["scoring"] == 0 and gradalign["mean"]["seconds"]["scoring"] > 0
    assert gradalign["mean"]["seconds"]["validation_rollouts"] > 0
    # a second run into the same directories would resume, not re-time: refused, nothing overwritten
    before = out.read_text()
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert out.read_text() == before
