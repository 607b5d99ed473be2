"""`gradalign bench regimes`: cells are run directories, a finished cell is never recomputed, an unfinished one
resumes, every (regime, seed) writes its problem files once, and the report is built at the end."""

from __future__ import annotations

import json

import pytest
import yaml

from gradalign.bench import regimes
from gradalign.cli import main
from gradalign.curriculum import loop

pytestmark = pytest.mark.slow

TINY = dict(pool_size=48, validation_size=8, test_size=16, chunk_size=16, selection_ratio=4, rollouts_per_problem=4,
            validation_rollouts=4, rounds=2, steps_per_round=1, problems_per_step=4, num_generations=4,
            eval_samples=0)


def bench(tmp_path, *extra) -> int:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return main(["bench", "regimes", "--regimes", "imbalance", "--methods", "random,full", "--seeds", "2",
                 "--config", str(config), "--out", str(tmp_path / "b"), *extra])


def test_cells_files_report_and_resume(tmp_path, monkeypatch, capsys):
    # Kill the benchmark in the last cell's second round: everything before it is finished.
    original = loop.Curriculum.run_round
    calls = []

    def dies(self, r, *a):
        calls.append((self.cfg.method, self.cfg.seed, r))
        if (self.cfg.method, self.cfg.seed, r) == ("full", 1, 1):
            raise KeyboardInterrupt
        return original(self, r, *a)
    monkeypatch.setattr(loop.Curriculum, "run_round", dies)
    assert bench(tmp_path) == 130
    out = tmp_path / "b"
    assert json.loads((out / "bench.json").read_text())["seeds"] == [0, 1]
    assert json.loads((out / "imbalance" / "regime.json").read_text())["target_sources"] == ["sub"]
    for seed in (0, 1):
        data = out / "imbalance" / "data" / f"seed-{seed}"
        assert {"pool.jsonl", "validation.jsonl", "test.jsonl", "scenario.json"} <= {p.name for p in data.iterdir()}
    # Resume: only the unfinished cell runs, and only its missing round.
    calls.clear()
    monkeypatch.setattr(loop.Curriculum, "run_round", lambda self, r, *a: calls.append(
        (self.cfg.method, self.cfg.seed, r)) or original(self, r, *a))
    assert bench(tmp_path) == 0
    assert calls == [("full", 1, 1)]
    for method in ("random", "full"):
        for seed in (0, 1):
            cell = out / "imbalance" / method / f"seed-{seed}"
            rounds = [json.loads(line) for line in (cell / "rounds.jsonl").read_text().splitlines()]
            assert len(rounds) == 2
            # imbalance's forgetting test (the other tasks) is evaluated every round and kept with the run
            assert 0 <= rounds[-1]["test"]["extra"]["other-tasks"]["accuracy"] <= 1
            assert (cell / "problems" / "test-other-tasks.jsonl").exists()
            assert not (cell / "checkpoints").exists()  # a finished cell needs none (~1.5 GB a SmolLM2 cell)
    report = (out / "report.md").read_text()
    assert "imbalance" in report and (out / "report.html").exists()
    # `gradalign report` rebuilds the benchmark report from the files.
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").exists()


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["bench", "regimes", "--methods", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "unknown method or regime 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("not_a_field: 1\n")
    assert main(["bench", "regimes", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "unknown config key 'not_a_field'" in capsys.readouterr().err
    assert main(["bench", "regimes", "--threads", "2", "--workers", "2", "--out", str(tmp_path / "b")]) == 2
    assert "--threads must be >= 1 and sets one process's threads" in capsys.readouterr().err


def test_arms_name_a_method_and_a_variant_of_its_schedule(tmp_path, capsys):
    plan = regimes.BenchPlan(out=__import__("pathlib").Path("x"), regimes=regimes.REGIMES, methods=[], seeds=[0],
                             preset="standard", overrides={})
    batch = plan.config("imbalance", "gradalign-z@batch", 0)
    assert (batch.method, batch.schedule) == ("gradalign-z", "batch")
    assert batch.output_dir.endswith("imbalance/gradalign-z@batch/seed-0")
    lean = plan.config("imbalance", "gradalign@lean", 0)
    assert (lean.method, lean.schedule, lean.chunk_size, lean.keep) == ("gradalign", "rounds", 128, 32)
    # lean's selection completions per training completion, by construction: candidates + the validation direction
    # every validation_every rounds, less the first step's reused groups, per round of training
    training = lean.steps_per_round * lean.problems_per_step * lean.value("num_generations")
    selection = (lean.chunk_size * lean.rollouts_per_problem
                 + lean.validation_size * lean.validation_rollouts / lean.validation_every
                 - lean.problems_per_step * lean.value("num_generations"))
    assert selection / training == 1.0
    both = plan.config("imbalance", "gradalign-lfdr@batch-lean", 0)
    assert (both.method, both.schedule, both.validation_every, both.validation_rollouts) == (
        "gradalign-lfdr", "batch", lean.validation_every, lean.validation_rollouts)
    # @xN: the same arm for N times the benchmark's rounds (YAML overrides included), nothing else changed
    plan.overrides = {"rounds": 3}
    longer, full = plan.config("imbalance", "full@x2", 0), plan.config("imbalance", "full", 0)
    assert (longer.method, longer.rounds, longer.output_dir.endswith("imbalance/full@x2/seed-0")) == ("full", 6, True)
    def rest(cfg, *changed):
        return {k: v for k, v in vars(cfg).items() if k not in changed}
    assert rest(longer, "rounds", "output_dir", "grpo") == rest(full, "rounds", "output_dir", "grpo")
    assert rest(longer.grpo, "max_steps", "output_dir") == rest(full.grpo, "max_steps", "output_dir")
    assert longer.grpo.max_steps == 2 * full.grpo.max_steps  # a constant learning rate: its first rounds are full's
    assert main(["bench", "regimes", "--methods", "gradalign@often", "--out", str(tmp_path / "b")]) == 2
    assert ("unknown variant '@often' in 'gradalign@often' (choose from: @batch, @lean, @batch-lean, @teach, "
            "@teach-scaled, @teach-refill, or @xN: N >= 2 times the rounds)"
            in capsys.readouterr().err)
    assert main(["bench", "regimes", "--methods", "full@x1", "--out", str(tmp_path / "b")]) == 2
    assert "unknown variant '@x1' in 'full@x1'" in capsys.readouterr().err


def test_presets_are_valid_configs():
    for preset in regimes.PRESETS:
        plan = regimes.BenchPlan(out=__import__("pathlib").Path("x"), regimes=regimes.REGIMES,
                                 methods=["random"], seeds=[0], preset=preset, overrides={})
        cfg = plan.config("imbalance", "random", 0)
        assert cfg.scenario == "imbalance" and cfg.output_dir.endswith("imbalance/random/seed-0")


def test_standard_preset_defaults_and_seed_offset():
    """The standard preset runs its arms on 5 seeds at the demo's sizes; --first-seed moves the seeds."""
    import argparse

    from gradalign.bench.regimes import STANDARD_METHODS, add_regimes_parser, plan_from_args
    parser = argparse.ArgumentParser()
    add_regimes_parser(parser.add_subparsers())
    plan = plan_from_args(parser.parse_args(["regimes", "--preset", "standard"]))
    assert plan.methods == STANDARD_METHODS and plan.seeds == [0, 1, 2, 3, 4]
    assert {"gradalign", "gradalign-z", "nonzero-variance", "full", "gradalign-z@batch", "nonzero-variance@batch",
            "gradalign@lean"} <= set(plan.methods)
    cfg = plan.config("imbalance", "gradalign", 0)
    assert cfg.rounds * cfg.steps_per_round == 64 and cfg.chunk_size == 256
    plan = plan_from_args(parser.parse_args(["regimes", "--seeds", "2", "--first-seed", "5"]))
    assert plan.seeds == [5, 6]


def test_two_workers_share_the_cells_and_write_one_report(tmp_path, capsys):
    """--workers 2: two processes run the cells between them; every cell finishes once and the report covers all."""
    assert bench(tmp_path, "--workers", "2") == 0
    out = tmp_path / "b"
    for method in ("random", "full"):
        for seed in (0, 1):
            rounds = (out / "imbalance" / method / f"seed-{seed}" / "rounds.jsonl").read_text().splitlines()
            assert len(rounds) == 2
    printed = capsys.readouterr().out
    assert "report.md" in printed and (out / "report.md").exists()


def test_new_cells_extend_an_existing_benchmark(tmp_path):
    """Running another arm (or regime, or seed) into a benchmark directory of the same preset and settings adds it
    to bench.json, so the report shows it beside what was there; other settings start a new benchmark."""
    def plan(methods, regimes_, seeds, overrides):
        return regimes.BenchPlan(tmp_path, regimes_, methods, seeds, "quick", overrides)

    first = plan(["random", "full"], ["imbalance"], [0, 1], {"pool_size": 48})
    (tmp_path / "bench.json").write_text(json.dumps(regimes.bench_settings(first)))
    added = regimes.bench_settings(plan(["gradalign-lfdr", "full"], ["mixed"], [1, 2], {"pool_size": 48}))
    assert added["methods"] == ["random", "full", "gradalign-lfdr"]
    assert added["regimes"] == ["imbalance", "mixed"] and added["seeds"] == [0, 1, 2]
    other = regimes.bench_settings(plan(["gradalign-lfdr"], ["mixed"], [1], {"pool_size": 64}))
    assert other["methods"] == ["gradalign-lfdr"] and other["regimes"] == ["mixed"] and other["seeds"] == [1]


def test_real_model_preset_defaults():
    """The SmolLM2 preset: the coin-flip arithmetic by default (the skewed mix on request), the default rule beside
    the published one, its batch arms, the three references and plain GRPO for twice the steps, 3 seeds, k = 8 so
    clean problems vary."""
    import argparse

    from gradalign.bench.regimes import add_regimes_parser, plan_from_args
    parser = argparse.ArgumentParser()
    add_regimes_parser(parser.add_subparsers())
    plan = plan_from_args(parser.parse_args(["regimes", "--preset", "smollm2"]))
    assert plan.regimes == ["smollm2-coin"] and plan.seeds == [0, 1, 2]
    assert set(plan.methods) == {"gradalign-lfdr", "gradalign", "random", "nonzero-variance", "full",
                                 "consistent@batch", "gradalign-lfdr@batch-lean", "gradalign-lfdr@teach",
                                 "gradalign-lfdr@teach-refill", "full@x2", "consistent@teach-refill"}
    assert plan.config("smollm2-coin", "full@x2", 0).rounds == 2 * plan.config("smollm2-coin", "full", 0).rounds
    lean = plan.config("smollm2-coin", "gradalign-lfdr@batch-lean", 0)
    assert (lean.method, lean.schedule, lean.validation_every, lean.validation_rollouts) == ("gradalign-lfdr", "batch",
                                                                                           2, 4)
    teach = plan.config("smollm2-coin", "gradalign-lfdr@teach", 0)  # the lean batch arm with unpadded steps
    assert (teach.schedule, teach.validation_every, teach.pad_steps) == ("batch", 2, False)
    scaled = plan.config("smollm2-coin", "gradalign-lfdr@teach-scaled", 0)  # and short steps at a smaller rate
    assert (scaled.schedule, scaled.validation_every, scaled.pad_steps, scaled.scale_short_steps) == ("batch", 2, False,
                                                                                                     True)
    refill = plan.config("smollm2-coin", "gradalign-lfdr@teach-refill", 0)  # or short steps refilled from more draws
    assert (refill.schedule, refill.validation_every, refill.pad_steps, refill.max_draws) == ("batch", 2, False, 3)
    cfg = plan.config("smollm2-coin", "gradalign-lfdr", 0)
    assert (cfg.model_args.model_name_or_path, cfg.verifier, cfg.rollouts_per_problem) == ("smollm2-135m", "task", 8)
    skewed = plan_from_args(parser.parse_args(["regimes", "--preset", "smollm2", "--regimes", "smollm2-skewed"]))
    assert skewed.config("smollm2-skewed", "full", 1).scenario == "smollm2-skewed"


def test_a_target_share_only_where_validation_is_part_of_the_pool():
    """imbalance, low-utility and mixed validate on some of the pool's sources: their share is the story; a pool
    whose every source is validated (unreliable rewards) has no target, so no column reading 1.0 for every arm."""
    from gradalign.data.regimes import build_scenario
    sizes = dict(pool_size=60, validation_size=8, test_size=8, seed=0)
    assert regimes.target_sources(build_scenario("imbalance", **sizes)) == ["sub"]
    assert regimes.target_sources(build_scenario("low-utility", **sizes)) == ["add", "sub"]
    assert regimes.target_sources(build_scenario("unreliable-rewards", **sizes)) == []


def test_keep_checkpoints_keeps_a_finished_cells_last_checkpoint(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "rounds": 1}))
    assert main(["bench", "regimes", "--regimes", "imbalance", "--methods", "random", "--seeds", "1", "--config",
                 str(config), "--out", str(tmp_path / "b"), "--keep-checkpoints"]) == 0
    assert (tmp_path / "b" / "imbalance" / "random" / "seed-0" / "checkpoints" / "round-000").is_dir()
