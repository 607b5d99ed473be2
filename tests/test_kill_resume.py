"""A real kill: SIGKILL a `gradalign run` process in the middle of a round, rerun the same command, compare."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ARGS = ["--pool-size", "64", "--validation-size", "16", "--test-size", "16", "--chunk-size", "16",
        "--selection-ratio", "4", "--rollouts-per-problem", "4", "--validation-rollouts", "4", "--rounds", "3",
        "--steps-per-round", "4", "--problems-per-step", "4", "--num-generations", "4", "--eval-samples", "0"]


def command(out):
    return [sys.executable, "-m", "gradalign.cli", "run", "--output-dir", str(out), *ARGS]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def test_sigkill_mid_round_then_rerun_equals_uninterrupted(tmp_path, request):
    whole, killed, log = tmp_path / "whole", tmp_path / "killed", tmp_path / "whole.log"
    # the uninterrupted run goes on beside the one that is killed (one torch thread each: 2 cores)
    with open(log, "w") as stderr:
        uninterrupted = subprocess.Popen(command(whole), env=env(), stdout=subprocess.DEVNULL, stderr=stderr)
    request.addfinalizer(uninterrupted.kill)  # a no-op once it has finished
    proc = subprocess.Popen(command(killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_round = killed / "checkpoints" / "round-000" / "record.json"
    deadline = time.time() + 240
    while not first_round.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first_round.exists(), "round 0 never finished"
    time.sleep(0.5)  # well inside round 1 (selection + 4 GRPO steps take seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [json.loads(x)["round"] for x in (killed / "rounds.jsonl").read_text().splitlines()]
    assert finished in ([0], [0, 1]), finished  # never a half-written round
    assert not (killed / "checkpoints" / "round-002").exists()

    subprocess.run(command(killed), check=True, env=env(), capture_output=True)
    assert uninterrupted.wait(timeout=400) == 0, log.read_text()[-3000:]
    a = [json.loads(x) for x in (whole / "rounds.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (killed / "rounds.jsonl").read_text().splitlines()]
    assert [r["selected_ids"] for r in a] == [r["selected_ids"] for r in b]
    assert [r["test"]["accuracy"] for r in a] == [r["test"]["accuracy"] for r in b]
    wa = load_file(str(whole / "checkpoints/round-002/model.safetensors"))
    wb = load_file(str(killed / "checkpoints/round-002/model.safetensors"))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
