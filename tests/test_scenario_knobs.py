"""The built-in scenarios' knobs are RunConfig fields: YAML keys, `--flags` of run/demo/select and of
`gradalign bench regimes`, each scenario receiving exactly its own; bad values are one-line errors."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from gradalign.bench.regimes import plan_from_args
from gradalign.cli import build_parser, main
from gradalign.flags import overrides
from gradalign.config import SCENARIO_FIELDS, SCENARIO_KNOBS, RunConfig
from gradalign.curriculum import setup
from gradalign.curriculum.setup import load_problem_sets, make_reward
from gradalign.data.io import problems_to_rows

SMALL = dict(pool_size=200, validation_size=8, test_size=8)


def shares(problems, key=lambda p: p.source) -> dict:
    counts = Counter(key(p) for p in problems)
    return {k: n / len(problems) for k, n in counts.items()}


def test_imbalance_knobs_reach_the_builder():
    sets = load_problem_sets(RunConfig.of(scenario="imbalance", target_family="add", other_families=["sub", "sum3"],
                                       target_share=0.3, **SMALL))
    assert shares(sets.pool)["add"] == pytest.approx(0.3, abs=0.02)
    assert set(shares(sets.pool)) == {"add", "sub", "sum3"}
    assert {p.source for p in sets.validation} == {p.source for p in sets.test} == {"add"}
    assert {p.source for p in sets.extra_tests["other-tasks"]} == {"sub", "sum3"}
    assert sets.params["target"] == "add" and sets.params["target_share"] == 0.3


def test_yaml_knobs_reach_the_builder(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dict(scenario="low-utility", useful_families=["mul"], useful_share=0.4,
                                        trivial_share=0.25, **SMALL)))
    sets = load_problem_sets(RunConfig.from_sources(str(path)))
    utility = shares(sets.pool, key=lambda p: p.metadata["utility"])
    assert utility["useful"] == pytest.approx(0.4, abs=0.01)
    assert utility["trivial"] == pytest.approx(0.6 * 0.25, abs=0.01)
    assert {p.source for p in sets.pool if p.metadata["utility"] == "useful"} == {"mul"}
    assert {p.source for p in sets.validation} == {"mul"}


def test_cli_flags_become_overrides_with_any_number_of_names():
    args = build_parser().parse_args(["run", "--scenario", "imbalance", "--target-family", "add", "--other-families",
                                      "sub", "sum3", "mul", "--target-share", "0.25", "--passrate-band", "0.1", "0.9"])
    got = overrides(args)
    assert got["other_families"] == ["sub", "sum3", "mul"] and got["target_family"] == "add"
    assert got["target_share"] == 0.25 and got["passrate_band"] == [0.1, 0.9]  # float lists keep their count
    cfg = RunConfig.from_sources(None, {**got, **SMALL})
    assert set(shares(load_problem_sets(cfg).pool)) == {"add", "sub", "sum3", "mul"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--passrate-band", "0.1"])


def test_each_scenario_gets_exactly_its_own_knobs(monkeypatch):
    seen = {}
    monkeypatch.setattr(setup, "build_scenario", lambda name, **kw: seen.setdefault(name, kw))
    for scenario in ["smollm2-arithmetic", *SCENARIO_KNOBS]:
        load_problem_sets(RunConfig.of(scenario=scenario, corruption="wrong-answer", families=["mul"], target_family="add",
                                    other_families=["sub"], useful_families=["sum3"], useful_share=0.3, **SMALL))
    base = {"pool_size", "validation_size", "test_size", "seed"}
    assert set(seen["smollm2-arithmetic"]) == base
    for scenario, knobs in SCENARIO_KNOBS.items():
        assert set(seen[scenario]) == base | set(knobs)
    assert seen["unreliable-rewards"]["families"] == {"mul": 1.0}  # equal weights, the builder's layout
    assert seen["unreliable-rewards"]["corruption"] == "wrong-answer"
    assert seen["imbalance"]["target"] == "add" and seen["imbalance"]["others"] == ["sub"]
    assert seen["low-utility"]["useful"] == ["sum3"]
    assert seen["mixed"]["useful_share"] == 0.3 and seen["mixed"]["corruption"] == "wrong-answer"
    assert seen["smollm2-coin"]["corruption"] == "wrong-answer"
    assert set(seen["smollm2-skewed"]) == base | {"target_share"}


def test_knobs_left_unset_take_each_scenario_default(monkeypatch):
    """`useful_share` and `corruption` default to None in the config: each builder's own default applies (0.2 and
    none for low-utility, 0.5 and half coin / half wrong-answer for mixed), not one value for every scenario."""
    seen = {}
    monkeypatch.setattr(setup, "build_scenario", lambda name, **kw: seen.setdefault(name, kw))
    for scenario in ["low-utility", "mixed", "unreliable-rewards"]:
        load_problem_sets(RunConfig.of(scenario=scenario, **SMALL))
    assert "useful_share" not in seen["low-utility"] and "useful_share" not in seen["mixed"]
    assert "corruption" not in seen["mixed"] and "corruption" not in seen["unreliable-rewards"]
    monkeypatch.undo()
    pool = load_problem_sets(RunConfig.of(scenario="mixed", pool_size=400, validation_size=8, test_size=8)).pool
    useful = [p for p in pool if p.metadata["utility"] == "useful"]
    assert len(useful) == 200 and sum(p.corrupted for p in useful) == 100
    assert sum(p.metadata.get("corruption") == "coin" for p in pool) == 50


def test_wrong_answer_corruption_end_to_end():
    cfg = RunConfig.of(scenario="unreliable-rewards", corruption="wrong-answer", families=["add", "mul"],
                    corrupt_fraction=0.5, **SMALL)
    sets = load_problem_sets(cfg)
    assert {p.source for p in sets.pool} == {"add", "mul"}
    corrupted = [p for p in sets.pool if p.corrupted]
    assert len(corrupted) == 100
    assert all(p.metadata["corruption"] == "wrong-answer" and p.metadata["wrong_answer"] != p.answer
               for p in corrupted)
    reward = make_reward(cfg)
    for p in corrupted[:20]:
        meta = {**p.metadata, "problem_id": p.id}  # what the rollout code hands the reward
        assert reward(p.metadata["wrong_answer"], p.answer, meta) == 1.0
        assert reward(p.answer, p.answer, meta) == 0.0
    # and through TRL's reward columns, as training sees it
    from gradalign.curriculum.trl_bridge import TRLReward
    rows = problems_to_rows(corrupted[:4])
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    paid = TRLReward(reward)([r["prompt"] for r in rows], [p.metadata["wrong_answer"] for p in corrupted[:4]],
                             **columns)
    unpaid = TRLReward(reward)([r["prompt"] for r in rows], [p.answer for p in corrupted[:4]], **columns)
    assert paid == [1.0] * 4 and unpaid == [0.0] * 4


@pytest.mark.parametrize("key, value", [
    ("corruption", "flip"), ("corrupt_fraction", 1.5), ("target_share", -0.1), ("useful_share", 2),
    ("trivial_share", "half"), ("target_family", "div"), ("target_family", ["add"]), ("other_families", []),
    ("other_families", ["sub", "div"]), ("other_families", ["sub", "sub"]), ("useful_families", "add"),
    ("families", ["add", "nope"]), ("other_families", ["sub", "add"]),
])
def test_bad_knob_is_a_one_line_error_naming_the_key(key, value):
    extra = {"target_family": "add"} if key == "other_families" else {}
    with pytest.raises(ValueError) as e:
        RunConfig.of(**{**extra, key: value})
    message = str(e.value)
    assert message.startswith("config: ") and f"'{key}'" in message and "\n" not in message


def test_bad_knob_from_the_command_line(capsys):
    assert main(["select", "--corruption", "flip", "--out", "x.jsonl", "--n", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'corruption'" in err[0]


def test_bench_regimes_help_lists_the_knobs(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "regimes", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for name in SCENARIO_FIELDS:
        assert RunConfig.flag(name) in out
    assert RunConfig.fields_help()["target_share"][:30] in " ".join(out.split())  # the field's own help


def bench_args(*argv):
    return build_parser().parse_args(["bench", "regimes", *argv])


def test_bench_regimes_flags_go_into_the_plan(tmp_path):
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump({"pool_size": 64, "target_share": 0.5, "useful_share": 0.3}))
    plan = plan_from_args(bench_args("--config", str(config), "--corruption", "wrong-answer", "--target-family", "add",
                                     "--other-families", "sub", "sum3", "--target-share", "0.3", "--useful-families",
                                     "mul", "--trivial-share", "0.1", "--corrupt-fraction", "0.25"))
    assert plan.overrides == {"pool_size": 64, "target_share": 0.3, "useful_share": 0.3, "corruption": "wrong-answer",
                              "target_family": "add", "other_families": ["sub", "sum3"], "useful_families": ["mul"],
                              "trivial_share": 0.1, "corrupt_fraction": 0.25}
    cfg = plan.config("imbalance", "random", 0)
    assert (cfg.target_family, cfg.other_families, cfg.target_share) == ("add", ["sub", "sum3"], 0.3)
    assert plan_from_args(bench_args()).overrides == {}


def test_bench_regimes_bad_flag_fails_before_any_cell(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "regimes", "--target-family", "add", "--other-families", "add", "sum3",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'other_families'" in err[0]
    assert not out.exists()
