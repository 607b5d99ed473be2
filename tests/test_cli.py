"""The `gradalign` command: runs from files in TRL and verl layouts, YAML + overrides, and every bad input."""

import json

import pytest
import yaml

from gradalign.cli import main
from gradalign.data.io import save_problems
from gradalign.data.regimes import unreliable_rewards

pytestmark = pytest.mark.slow

TINY = ["--chunk-size", "16", "--selection-ratio", "4", "--rollouts-per-problem", "4", "--validation-rollouts", "4",
        "--rounds", "1", "--steps-per-round", "1", "--problems-per-step", "4", "--num-generations", "4",
        "--eval-samples", "0"]


@pytest.fixture
def files(tmp_path):
    sc = unreliable_rewards(pool_size=32, validation_size=8, test_size=16, seed=3)
    paths = {"pool": tmp_path / "pool.jsonl", "validation": tmp_path / "val.jsonl", "test": tmp_path / "test.jsonl"}
    save_problems(paths["pool"], sc.pool)
    save_problems(paths["validation"], sc.validation)
    save_problems(paths["test"], sc.test)
    return paths


def run(tmp_path, files, *extra, out="run"):
    return main(["run", "--pool", str(files["pool"]), "--validation", str(files["validation"]), "--test",
                 str(files["test"]), "--output-dir", str(tmp_path / out), *TINY, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradalign: error: "), err
    return err[0]


def test_run_from_jsonl_files_with_yaml_and_overrides(tmp_path, files, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "random", "rounds": 3, "seed": 5}))
    assert run(tmp_path, files, "--config", str(config), "--method", "gradalign") == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"] == "gradalign" and saved["seed"] == 5 and saved["rounds"] == 1  # flags beat the YAML
    assert "gradalign" in capsys.readouterr().out


def test_run_from_verl_parquet_files(tmp_path):
    sc = unreliable_rewards(pool_size=32, validation_size=8, test_size=16, seed=4)
    files = {name: tmp_path / f"{name}.parquet" for name in ("pool", "validation", "test")}
    for name, problems in (("pool", sc.pool), ("validation", sc.validation), ("test", sc.test)):
        save_problems(files[name], problems, style="verl")
    assert run(tmp_path, files) == 0
    record = json.loads((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()[0])
    assert record["selected_count"] == 4


def test_missing_file(tmp_path, files, capsys):
    files["pool"] = tmp_path / "nope.jsonl"
    assert run(tmp_path, files) == 2
    assert "nope.jsonl: file not found" in one_line_error(capsys)


def test_empty_pool(tmp_path, files, capsys):
    files["pool"].write_text("")
    assert run(tmp_path, files) == 2
    assert "pool.jsonl: no problems" in one_line_error(capsys)


def test_empty_validation(tmp_path, files, capsys):
    files["validation"].write_text("\n")
    assert run(tmp_path, files) == 2
    assert "val.jsonl: no problems" in one_line_error(capsys)


def test_row_without_answer(tmp_path, files, capsys):
    lines = files["pool"].read_text().splitlines()
    row = json.loads(lines[2])
    del row["answer"]
    lines[2] = json.dumps(row)
    files["pool"].write_text("\n".join(lines) + "\n")
    assert run(tmp_path, files) == 2
    msg = one_line_error(capsys)
    assert "pool.jsonl: line 3" in msg and "'answer'" in msg


def test_malformed_json_line(tmp_path, files, capsys):
    files["pool"].write_text(files["pool"].read_text() + '{"prompt": "1+1=", "answer": \n')
    assert run(tmp_path, files) == 2
    msg = one_line_error(capsys)
    assert "pool.jsonl: line 33: malformed JSON" in msg


def test_unknown_method(tmp_path, files, capsys):
    assert run(tmp_path, files, "--method", "gradalgin") == 2
    msg = one_line_error(capsys)
    assert "unknown method 'gradalgin'" in msg and "gradalign" in msg


def test_chunk_larger_than_pool(tmp_path, files, capsys):
    assert run(tmp_path, files, "--chunk-size", "5120") == 2
    msg = one_line_error(capsys)
    assert "pool.jsonl" in msg and "chunk_size 5120" in msg and "32 problems" in msg


def test_unknown_config_key(tmp_path, files, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("methd: random\n")
    assert run(tmp_path, files, "--config", str(config)) == 2
    assert "bad.yaml: unknown config key 'methd'" in one_line_error(capsys)


def unsolvable_validation(files):
    rows = [json.loads(x) for x in files["validation"].read_text().splitlines()]
    files["validation"].write_text("".join(json.dumps({**r, "answer": "zz"}) + "\n" for r in rows))


def test_validation_without_direction_is_an_error_by_default(tmp_path, files, capsys):
    unsolvable_validation(files)  # every validation reward is 0: all groups zero-variance
    assert run(tmp_path, files) == 2
    msg = one_line_error(capsys)
    assert "zero-variance" in msg and "no_direction" in msg


def test_validation_without_direction_uses_the_chosen_fallback(tmp_path, files, caplog):
    unsolvable_validation(files)
    assert run(tmp_path, files, "--no-direction", "random") == 0
    record = json.loads((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()[0])
    assert record["fallback"] == "random" and record["selected_count"] == 4
    assert any("no_direction: random" in r.message for r in caplog.records)


def test_changed_config_does_not_touch_a_finished_run(tmp_path, files, capsys):
    assert run(tmp_path, files) == 0
    out = tmp_path / "run"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run(tmp_path, files, "--learning-rate", "0.5") == 2
    assert "config.yaml: this run directory was started with learning_rate 0.0001; this command has learning_rate " \
           "0.5" in one_line_error(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("gradalign-lfdr", "gradalign", "gradalign-z", "gradalign-dot", "negalign", "norm", "selfalign", "align-x-learnability", "accgreedy",
                 "passrate-band", "nonzero-variance", "random", "full"):
        assert name in out


def test_math_verifier_in_a_run(tmp_path, files):
    assert run(tmp_path, files, "--verifier", "math", "--method", "accgreedy") == 0
    record = json.loads((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()[0])
    assert record["pass_rate"]["max"] > 0  # math-verify accepted some of the policy's answers


def test_demo_writes_table_plot_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--output-dir", str(out), "--pool-size", "64", "--validation-size", "16", "--test-size",
                 "16", *TINY, "--rounds", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    for method in ("gradalign-lfdr", "gradalign", "random", "accgreedy", "full"):  # the default beside the paper
        assert method in printed and (out / method / "rounds.jsonl").exists()
    assert "corrupted share" in printed and "one seed on one machine" in printed
    assert "cost ledger" in printed  # what selection generated against what training consumed
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| **gradalign** |" in (out / "summary.md").read_text()


def test_any_local_hugging_face_checkpoint(tmp_path, files):
    # A plain HF directory (weights + tokenizer files), loaded through AutoModelForCausalLM / AutoTokenizer.
    from gradalign.policy.warmstart import warm_started_tiny
    model, tokenizer = warm_started_tiny()
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    assert run(tmp_path, files, "--model-name-or-path", str(tmp_path / "ckpt")) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model_name_or_path"] == str(tmp_path / "ckpt")


def test_unloadable_model(tmp_path, files, capsys):
    (tmp_path / "empty-model").mkdir()
    assert run(tmp_path, files, "--model-name-or-path", str(tmp_path / "empty-model")) == 2
    assert "empty-model" in one_line_error(capsys)


def test_round_with_nothing_eligible_is_a_clean_error_and_keeps_finished_rounds(tmp_path, files, capsys):
    # Every pool answer unreachable: all candidate groups are zero-variance (all rewards 0), so gradalign's
    # default (exclude zero-variance) has nothing to choose from.
    rows = [json.loads(x) for x in files["pool"].read_text().splitlines()]
    files["pool"].write_text("".join(json.dumps({**r, "answer": "zz", "metadata": {}}) + "\n" for r in rows))
    assert run(tmp_path, files) == 2
    assert "no candidate was eligible" in one_line_error(capsys)


@pytest.mark.parametrize("command", [["run"], ["select"], ["demo"], ["rollouts"], ["report"], ["methods"], ["bench"],
                                     ["bench", "scoring"], ["bench", "fidelity"], ["bench", "regimes"],
                                     ["bench", "scaling"]])
def test_every_command_prints_its_help(command, capsys):
    """argparse %-formats help texts: a stray '%' in a config field's help would turn --help into a traceback."""
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0 and "usage: gradalign" in capsys.readouterr().out
