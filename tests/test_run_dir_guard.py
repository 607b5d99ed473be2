"""A run directory is bound to its config from the first file written, and guarded: every bad config value, model
or directory is refused with one line (exit 2) before anything is written; the same config resumes under any
spelling of the path; one process at a time (a lock, taken over when its process is gone); leftovers of killed
writes are removed on the next start."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from test_cli import TINY, files  # noqa: F401  (the tiny run's flags and its problem-files fixture)

from gradalign import fileio
from gradalign.cli import main
from gradalign.curriculum import loop


def run(files, out, *extra):
    return main(["run", "--pool", str(files["pool"]), "--validation", str(files["validation"]), "--test",
                 str(files["test"]), "--output-dir", str(out), *TINY, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradalign: error: "), err
    return err[0].removeprefix("gradalign: error: ")


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def killed_in_round_0(monkeypatch, files, out):
    """A run killed before its first round finished: config.yaml, problems/ and initial.json exist."""
    def dies(self, r, *a):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(loop.Curriculum, "run_round", dies)
        assert run(files, out) == 130
    assert {"config.yaml", "initial.json", "problems"} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoints").exists() and not (out / fileio.LOCK_NAME).exists()  # released on the way out


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_changed_config_before_any_round_is_refused_and_the_same_one_resumes_under_another_spelling(
        tmp_path, files, monkeypatch, capsys, caplog):
    out = tmp_path / "run"
    killed_in_round_0(monkeypatch, files, out)
    capsys.readouterr()
    before = snapshot(out)
    assert run(files, out, "--seed", "1") == 2
    assert one_line_error(capsys) == (f"{out}/config.yaml: this run directory was started with seed 0; this command "
                                      f"has seed 1; use a new output_dir (or the same config to resume)")
    assert run(files, out, "--method", "random") == 2
    assert "started with method 'gradalign-lfdr'; this command has method 'random'" in one_line_error(capsys)
    assert snapshot(out) == before

    # Leftovers of killed writes and the lock of a process that is gone: cleared on the next start.
    (out / "checkpoints" / ".round-000-abcd_123").mkdir(parents=True)
    (out / "checkpoints" / ".round-000-abcd_123" / "model.safetensors").write_bytes(b"half")
    (out / ".rounds.jsonl.x1y2z3w4.tmp").write_text("half")
    (out / "problems" / ".pool.jsonl.q9w8e7r6.tmp").write_text("half")
    (out / fileio.LOCK_NAME).write_text(f"{dead_pid()} {os.uname().nodename} -\n")
    monkeypatch.chdir(tmp_path)
    assert run(files, "./run/") == 0  # the same config, the directory spelt relative with a trailing slash
    assert any("taking over the lock" in r.message for r in caplog.records)
    assert [json.loads(x)["round"] for x in (out / "rounds.jsonl").read_text().splitlines()] == [0]
    assert (out / "config.yaml").read_bytes() == before[out.relative_to(out) / "config.yaml"]  # kept as started
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round-000"]
    assert not list(out.rglob("*.tmp")) and not (out / fileio.LOCK_NAME).exists()


@pytest.mark.parametrize("text, message", [
    ("rounds: 1.7\n", "run.yaml: 'rounds' must be an integer (got 1.7)"),
    ("chunk_size: [1, 2]\n", "run.yaml: 'chunk_size' must be an integer (got [1, 2])"),
    ("seed: null\n", "run.yaml: 'seed' must be an integer (got None)"),
    ("passrate_band: 0.5\n", "run.yaml: 'passrate_band' must be a list of 2 numbers (got 0.5)"),
    ("rounds: abc\n", "run.yaml: 'rounds' must be an integer (got 'abc')"),
    ("temperature: -1\n", "run.yaml: 'temperature' must be > 0 (got -1)"),
    ("top_p: .nan\n", "run.yaml: 'top_p' must be a finite number (got nan)"),
    ("gradient_checkpointing: 1\n", "run.yaml: 'gradient_checkpointing' must be true or false (got 1)"),
    ("families: add\n", "run.yaml: 'families' must be a list of names (got 'add')"),
    ("passrate_band: [0.9, 0.1]\n", "run.yaml: 'passrate_band' must be [a, b] with 0 <= a <= b <= 1 (got [0.9, 0.1])"),
    ("loss_type: ppo\n", "run.yaml: 'loss_type' must be one of dapo, grpo, dr_grpo, bnpo, cispo, sapo, vespo "
                         "(got 'ppo')"),
    (b"seed: 1\nmethod: gr\xe4dalign\n", "run.yaml: line 2: not UTF-8 text (byte 0xe4)"),
    ("rounds: [1\n", "run.yaml: line 2: malformed YAML"),
])
def test_bad_yaml_value_is_one_line_naming_file_and_key_before_anything_is_written(tmp_path, files, capsys, text,
                                                                                    message):
    config = tmp_path / "run.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert run(files, tmp_path / "run", "--config", str(config)) == 2
    assert one_line_error(capsys).startswith(f"{tmp_path}/{message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "config: 'temperature' (--temperature) must be > 0 (got -1.0)"),
    (["--learning-rate", "-1"], "config: 'learning_rate' (--learning-rate) must be >= 0 (got -1.0)"),
    (["--top-p", "2.0"], "config: 'top_p' (--top-p) must be in (0, 1] (got 2.0)"),
    (["--top-p", "0"], "config: 'top_p' (--top-p) must be in (0, 1] (got 0.0)"),
    (["--weight-decay", "-0.1"], "config: 'weight_decay' (--weight-decay) must be >= 0 (got -0.1)"),
    (["--max-grad-norm", "0"], "config: 'max_grad_norm' (--max-grad-norm) must be > 0 (got 0.0)"),
    (["--epsilon", "0"], "config: 'epsilon' (--epsilon) must be > 0 (got 0.0)"),
    (["--eval-samples", "-1"], "config: 'eval_samples' (--eval-samples) must be >= 0 (got -1)"),
    (["--micro-batch", "0"], "config: 'micro_batch' (--micro-batch) must be >= 1 (got 0)"),
    (["--beta", "-1"], "config: 'beta' (--beta) must be >= 0 (got -1.0)"),
    (["--seed", "-1"], "config: 'seed' (--seed) must be >= 0 (got -1)"),
    (["--temperature", "inf"], "config: 'temperature' (--temperature) must be a finite number (got inf)"),
    (["--scale-rewards", "yes"], "config: 'scale_rewards' (--scale-rewards) must be one of group, batch, none"),
    (["--device", "gpu"], "config: 'device' (--device) must be auto, cpu, cuda or cuda:N (got 'gpu')"),
])
def test_bad_flag_value_is_one_line_naming_the_flag_before_anything_is_written(tmp_path, files, capsys, flags,
                                                                               message):
    assert run(files, tmp_path / "run", *flags) == 2
    assert one_line_error(capsys).startswith(message)
    assert not (tmp_path / "run").exists()


def test_config_that_is_a_directory(tmp_path, files, capsys):
    (tmp_path / "conf").mkdir()
    assert run(files, tmp_path / "run", "--config", str(tmp_path / "conf")) == 2
    assert one_line_error(capsys) == f"{tmp_path}/conf: is a directory, not a YAML config file"
    assert not (tmp_path / "run").exists()


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    from gradalign.config import RunConfig
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-4\n")  # YAML 1.1 reads this as a string
    assert RunConfig.from_sources(str(config)).grpo.learning_rate == 1e-4


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from gradalign.policy.warmstart import warm_started_tiny
    from gradalign.policy.load import save_policy
    model, _ = warm_started_tiny()
    save_policy(model, tmp_path / "ckpt", tiny=True)
    return tmp_path / "ckpt"


def test_model_config_errors_are_one_line_before_the_run_directory_exists(tmp_path, files, tiny_checkpoint,
                                                                          capsys, monkeypatch):
    out = tmp_path / "run"
    config = tiny_checkpoint / "config.json"
    values = json.loads(config.read_text())
    config.write_text(json.dumps({**values, "hidden_size": "big"}))
    assert run(files, out, "--model-name-or-path", str(tiny_checkpoint)) == 2
    assert one_line_error(capsys) == f"{config}: field 'hidden_size' must be an integer (got 'big')"
    config.write_text("{garbage")  # beside the tiny checkpoint's marker
    assert run(files, out, "--model-name-or-path", str(tiny_checkpoint)) == 2
    assert one_line_error(capsys) == f"{config}: line 1: malformed JSON (Expecting property name enclosed in " \
                                     f"double quotes)"
    config.write_text(json.dumps({**values, "vocab_size": 7}))
    assert run(files, out, "--model-name-or-path", str(tiny_checkpoint)) == 2
    assert "field 'vocab_size' is 7" in one_line_error(capsys)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run(files, out, "--model-name-or-path", "models/x") == 2
    assert one_line_error(capsys) == ("model 'models/x': not a directory with a config.json and no such hub id "
                                      "(offline)")
    assert run(files, out, "--model-name-or-path", str(tmp_path / "models" / "x")) == 2
    assert one_line_error(capsys) == f"model '{tmp_path}/models/x': no such directory (and not a Hugging Face hub id)"
    assert not out.exists()


def test_model_directory_without_a_config_json(tmp_path, files, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "bad-model").mkdir()
    assert run(files, out, "--model-name-or-path", str(tmp_path / "bad-model")) == 2
    assert one_line_error(capsys) == f"model '{tmp_path}/bad-model': no config.json in this directory (not a " \
                                     f"Hugging Face checkpoint)"
    assert list(out.iterdir()) == []


def test_output_dir_that_cannot_be_written(tmp_path, files, capsys, monkeypatch):
    # The suite runs as root, which chmod does not stop: a path under a regular file, and a lock whose creation is
    # refused (PermissionError, as a read-only directory gives) stand in for a read-only output directory.
    (tmp_path / "file").write_text("x")
    assert run(files, tmp_path / "file" / "run") == 2
    assert one_line_error(capsys) == f"{tmp_path}/file/run: cannot write here ({tmp_path}/file is a file, not a " \
                                     f"directory)"
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *a, **kw):
        if str(path).startswith(str(out)) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)
    monkeypatch.setattr(os, "open", read_only)
    assert run(files, out) == 2
    assert one_line_error(capsys) == f"{out}: cannot write here (permission denied)"
    assert list(out.iterdir()) == []


def test_lock_refuses_a_second_process_and_takes_over_a_stale_one(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / fileio.LOCK_NAME).write_text(f"{sleeper.pid} {os.uname().nodename} {fileio._start_time(sleeper.pid)}\n")
        with pytest.raises(ValueError) as e:
            fileio.RunLock(out).acquire()
        assert str(e.value) == f"{out}: another gradalign process (pid {sleeper.pid}) is running in this directory"
        assert (out / fileio.LOCK_NAME).read_text().split()[0] == str(sleeper.pid)  # left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same pid now runs a later process (its start time differs): gone, as is a pid that no longer runs
    for stale in (f"{os.getpid()} {os.uname().nodename} 1\n", f"{dead_pid()} {os.uname().nodename} -\n"):
        (out / fileio.LOCK_NAME).write_text(stale)
        with fileio.RunLock(out) as lock:
            assert (out / fileio.LOCK_NAME).read_text() == lock.token
            with pytest.raises(ValueError, match="already running in this directory"):
                fileio.RunLock(out).acquire()  # held by this very process
        assert not (out / fileio.LOCK_NAME).exists()
    assert sum("taking over the lock" in r.message for r in caplog.records) == 2
    (out / fileio.LOCK_NAME).write_text(f"{os.getpid()} another-host -\n")
    with pytest.raises(ValueError, match=r"\(pid \d+ on host another-host\) may be running in this directory; if "
                                         r"none is, delete .*\.lock"):
        fileio.RunLock(out).acquire()


@pytest.mark.slow
def test_second_process_on_a_running_directory_is_refused_and_changes_nothing(tmp_path, files, monkeypatch, capsys):
    out = tmp_path / "run"
    killed_in_round_0(monkeypatch, files, out)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / fileio.LOCK_NAME).write_text(f"{sleeper.pid} {os.uname().nodename} {fileio._start_time(sleeper.pid)}\n")
        capsys.readouterr()
        before = snapshot(out)
        assert run(files, out) == 2
        assert one_line_error(capsys) == f"{out}: another gradalign process (pid {sleeper.pid}) is running in this " \
                                         f"directory"
        assert snapshot(out) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_yaml_written_config_resumes_and_bench_cells_compare_without_output_dir(tmp_path):
    from gradalign.config import RunConfig
    a = RunConfig.of(output_dir="runs/x", pool=str(tmp_path / "pool.jsonl"))
    (tmp_path / "pool.jsonl").write_text("")
    os.makedirs(tmp_path / "runs", exist_ok=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        b = RunConfig.of(output_dir=str(tmp_path / "runs" / "x") + "/", pool="pool.jsonl")
        assert a.first_difference(b) is None  # the same directory and the same pool file, spelt differently
        assert a.first_difference(RunConfig.of(output_dir="elsewhere", pool="pool.jsonl", seed=3)) == "seed"
    finally:
        os.chdir(cwd)
    shutil.rmtree(tmp_path / "runs")
    assert yaml.safe_load(yaml.safe_dump(a.to_dict()))["output_dir"] == "runs/x"  # written as the user spelt it


@pytest.mark.slow
def test_a_killed_bench_resumes_under_another_spelling_of_its_directory(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(pool_size=48, validation_size=8, test_size=16, chunk_size=16,
                                          selection_ratio=4, rollouts_per_problem=4, validation_rollouts=4, rounds=1,
                                          steps_per_round=1, problems_per_step=4, num_generations=4, eval_samples=0)))

    def bench(out):
        return main(["bench", "regimes", "--regimes", "imbalance", "--methods", "random", "--seeds", "1", "--config",
                     str(config), "--out", out])
    original = loop.Curriculum.run_round

    def dies(self, r, *a):
        raise KeyboardInterrupt
    monkeypatch.setattr(loop.Curriculum, "run_round", dies)
    assert bench(str(tmp_path / "b")) == 130
    monkeypatch.setattr(loop.Curriculum, "run_round", original)
    monkeypatch.chdir(tmp_path)
    assert bench("./b/") == 0
    cell = tmp_path / "b" / "imbalance" / "random" / "seed-0"
    assert len((cell / "rounds.jsonl").read_text().splitlines()) == 1 and not (cell / fileio.LOCK_NAME).exists()
