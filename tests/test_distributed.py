"""Several processes (torch.distributed, gloo on CPU): the same rollouts, scores and selection as one process.

The two-process runs go through `torchrun`, exactly as users launch them.
"""

import csv
import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gradalign.data.regimes import unreliable_rewards
from gradalign.data.io import save_problems
from gradalign.distributed import ProcessGroup, block_items, torchrun_command
from gradalign.policy.rollouts import SamplingConfig, sample_rollouts
from gradalign.policy.tiny import build_tiny_model, build_tokenizer
from gradalign.rewards import ExactMatch, ProblemReward

TESTS = os.path.dirname(__file__)
SIZES = ["--rollouts-per-problem", "4", "--validation-rollouts", "4", "--rollout-batch", "8",
         "--problems-per-step", "4", "--num-generations", "4"]


def test_ranks_own_round_robin_blocks_that_cover_the_list_once():
    n, block = 37, 8  # 5 blocks, the last one partial
    owned = [ProcessGroup(rank=r, world_size=3).shard(n, block) for r in range(3)]
    assert [blocks for blocks, _ in owned] == [[0, 3], [1, 4], [2]]
    assert sorted(np.concatenate([items for _, items in owned]).tolist()) == list(range(n))
    assert block_items(n, block, [4]).tolist() == [32, 33, 34, 35, 36]


def test_a_shard_of_blocks_samples_exactly_the_rows_of_the_whole_list():
    """The basis of N-process = 1-process: block b's rollouts do not depend on which other blocks are sampled."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    problems = unreliable_rewards(pool_size=20, validation_size=4, test_size=4, seed=1).pool
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=5, prompts_per_batch=6)
    reward = ProblemReward(ExactMatch())
    whole = sample_rollouts(model, tokenizer, problems, 3, reward, sampling, seed=7)
    shard = sample_rollouts(model, tokenizer, problems, 3, reward, sampling, seed=7, blocks=[1, 3])
    owned = block_items(len(problems), 6, [1, 3])
    assert shard.problem_ids == [problems[i].id for i in owned]
    rows = torch.cat([torch.nonzero(whole.group == i).flatten() for i in owned])
    assert shard.completions == [whole.completions[i] for i in rows]
    torch.testing.assert_close(shard.sample_logps[:, :whole.sample_logps.shape[1]].sum(1),
                               whole.sample_logps[rows].sum(1))
    assert np.array_equal(shard.pass_rates(), whole.pass_rates()[owned])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-data")
    sc = unreliable_rewards(pool_size=32, validation_size=16, test_size=16, seed=3)
    paths = {name: tmp / f"{name}.jsonl" for name in ("pool", "validation", "test")}
    for name, problems in (("pool", sc.pool), ("validation", sc.validation), ("test", sc.test)):
        save_problems(paths[name], problems)
    return paths


def launch(cmd: list[str], timeout: int = 400, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def read_scores(path) -> dict[str, dict]:
    with open(path) as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def assert_same_scores(one: dict[str, dict], two: dict[str, dict]) -> None:
    """Per-problem scores of 1 and 2 processes agree to fp32 round-off. fp32 (eps 1.19e-7) reductions split over 2
    ranks change the summation order of the per-problem dots and norms: an error on the scale of the terms summed,
    not of their sum, so a score near 0 (a cosine of 0.008) keeps the absolute error of the pool's larger scores.
    Hence 1e-4 (≈ 840 ulps, through the tiny model, the CSV's printed digits and the cosine's division) of the
    pool's largest score; a missing all-reduce halves a score (error ~0.5 of it: caught for every score above
    2e-4 of the largest)."""
    values = {pid: (float(one[pid]["score"]), float(two[pid]["score"])) for pid in one}
    scale = max(max(abs(a), abs(b)) for a, b in values.values())
    for pid, (a, b) in values.items():
        assert abs(b - a) <= 1e-4 * scale, (pid, a, b, scale)


def jobs(files, cropi_files, tmp) -> dict[str, list[str]]:
    """What the tests below run on 1 and on 2 processes, writing under `tmp` (tests/jobs.py's jobs): three
    one-shot selections (by method), a curriculum run and `GradAlignGRPOTrainer` in a TRL script."""
    return {
        "gradalign": ["select", "--method", "gradalign", "--pool", str(files["pool"]), "--validation",
                      str(files["validation"]), "--num-problems", "8", "--out", str(tmp / "selected.jsonl"), *SIZES],
        # a learning rate of 0: the warm-up runs, data parallel, but leaves the weights alone (see below)
        "learnalign": ["select", "--method", "learnalign", "--pool", str(files["pool"]), "--num-problems", "8",
                       "--warmup-steps", "2", "--warmup-problems", "8", "--learning-rate", "0", "--projection-dim",
                       "256", "--out", str(tmp / "learnalign.jsonl"), *SIZES],
        "cropi": ["select", "--method", "cropi", "--pool", str(cropi_files["pool"]), "--validation",
                  str(cropi_files["validation"]), "--num-problems", "30", "--projection-dim", "256",
                  "--offline-validation-rollouts", "4", "--out", str(tmp / "cropi" / "selected.jsonl"), *SIZES],
        "run": ["run", "--method", "gradalign", "--pool", str(files["pool"]), "--validation", str(files["validation"]),
                "--test", str(files["test"]), "--chunk-size", "16", "--selection-ratio", "4", "--rounds", "2",
                "--steps-per-round", "2", "--eval-samples", "2", "--output-dir", str(tmp / "run"), *SIZES],
        "trainer": [os.path.join(TESTS, "sharded_trainer.py"), str(tmp / "history.json")],
    }


@pytest.fixture(scope="module")
def cropi_files(tmp_path_factory):
    """A pool of 300: two shards of CROPI's offline store (256 problems each)."""
    tmp = tmp_path_factory.mktemp("cropi-data")
    sc = unreliable_rewards(pool_size=300, validation_size=16, test_size=4, seed=4)
    paths = {"pool": tmp / "pool.jsonl", "validation": tmp / "validation.jsonl"}
    save_problems(paths["pool"], sc.pool)
    save_problems(paths["validation"], sc.validation)
    return paths


@pytest.fixture(scope="module")
def launched(tmp_path_factory, files, cropi_files):
    """Every job of `jobs` run as one process (in this one) and on 2 processes: one torchrun launch runs them all,
    in order, then the 2-process FSDP rounds (`fsdp`). {"out": {processes: {job: its output path}}, "stdout": the
    2-process launch's}."""
    from jobs import run_all
    runs = {n: jobs(files, cropi_files, tmp_path_factory.mktemp(f"processes-{n}")) for n in (1, 2)}
    assert run_all(list(runs[1].values())) == 0
    tmp = output_of(runs[2]["run"]).parent
    runs[2]["fsdp"] = [os.path.join(TESTS, "fsdp_round.py"), str(tmp / "fsdp.json"), *FSDP_SETTINGS[2]]
    done = launch(torchrun_command(2, [os.path.join(TESTS, "jobs.py"), json.dumps(list(runs[2].values()))]), cwd=tmp)
    out = {n: {name: output_of(job) for name, job in by_name.items()} for n, by_name in runs.items()}
    return {"out": out, "stdout": done.stdout}


def output_of(job: list[str]) -> Path:
    """Where a job writes: `select`'s --out, `run`'s --output-dir, a script's first argument."""
    if job[0].endswith(".py"):
        return Path(job[1])
    return Path(job[job.index("--out" if job[0] == "select" else "--output-dir") + 1])


@pytest.mark.slow
def test_two_processes_score_and_select_exactly_as_one(launched):
    """One-shot GradAlign over the pool: per-problem scores to fp32 tolerance, the same selection in the same order."""
    outs = {n: launched["out"][n]["gradalign"] for n in (1, 2)}
    one, two = read_scores(outs[1].with_suffix(".scores.csv")), read_scores(outs[2].with_suffix(".scores.csv"))
    assert one.keys() == two.keys() and len(one) == 32
    for pid in one:
        assert float(two[pid]["pass_rate"]) == float(one[pid]["pass_rate"])  # identical rollouts
    assert_same_scores(one, two)
    assert outs[2].read_text() == outs[1].read_text()  # same problems, same order (best first)
    assert sum(row["score"] not in ("0.0", "") for row in one.values()) > 8  # real scores, not all zero


@pytest.mark.slow
def test_learnalign_on_two_processes_warms_up_data_parallel_and_selects_as_one(launched):
    """LearnAlign: the warm-up trains data parallel in the same process group, each rank projects its own
    candidates' gradients, and the energy split of the projection is summed over ranks. TRL samples each rank's
    share of a warm-up step on its own, so a real warm-up moves the weights differently on 2 processes; with a
    learning rate of 0 it runs all the same but leaves them alone, and everything after it must then match."""
    outs = {n: launched["out"][n]["learnalign"] for n in (1, 2)}
    one, two = read_scores(outs[1].with_suffix(".scores.csv")), read_scores(outs[2].with_suffix(".scores.csv"))
    assert sum(row["score"] not in ("0.0", "") for row in one.values()) > 8  # real scores
    for pid in one:
        assert float(two[pid]["pass_rate"]) == float(one[pid]["pass_rate"])
    assert_same_scores(one, two)
    assert outs[2].read_text() == outs[1].read_text()


@pytest.mark.slow
def test_cropi_on_two_processes_collects_the_same_store_and_selects_as_one(launched):
    """CROPI: the offline store's shards (256 problems each) are sampled by the ranks in turn and written by rank
    0 in order, so the store is the one a single process writes; each rank scores the pool problems it owns."""
    from gradalign.policy.rollout_store import RolloutStore
    outs = {n: launched["out"][n]["cropi"] for n in (1, 2)}
    stores = {n: RolloutStore.open(out.parent / "selected.work" / "offline" / "pool") for n, out in outs.items()}
    assert len(stores[2].meta["shards"]) == 2  # 256 + 44 problems: one shard sampled by each rank
    whole = {n: store.load() for n, store in stores.items()}
    assert whole[2].problem_ids == whole[1].problem_ids and whole[2].completions == whole[1].completions
    one, two = read_scores(outs[1].with_suffix(".scores.csv")), read_scores(outs[2].with_suffix(".scores.csv"))
    assert sum(row["score"] not in ("0.0", "") for row in one.values()) > 30  # real scores
    assert_same_scores(one, two)
    assert outs[2].read_text() == outs[1].read_text()


@pytest.mark.slow
def test_two_process_curriculum_trains_data_parallel_on_the_shared_selection(launched):
    runs = {n: launched["out"][n]["run"] for n in (1, 2)}
    assert launched["stdout"].count("gradalign: test accuracy") == 1  # one report, from rank 0
    records = {n: [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
               for n, out in runs.items()}
    assert [r["processes"] for r in records[2]] == [2, 2]
    initial = {n: json.loads((out / "initial.json").read_text()) for n, out in runs.items()}
    assert initial[2] == initial[1]  # sharded evaluation: the same sampled test completions
    first = {n: records[n][0] for n in runs}
    assert first[2]["selected_ids"] == first[1]["selected_ids"]  # round 0: same policy, same selection
    assert first[2]["validation"] == first[1]["validation"]
    assert all(r["train"] and np.isfinite(r["train"]["loss"]) for r in records[2])  # TRL trained in both rounds
    assert (runs[2] / "checkpoints" / "round-001" / "model.safetensors").exists()


def fake_torchrun(launched: list, selected: dict):
    """Stands in for `subprocess.run` in bench scaling (its module only): records the command, and writes the
    round record a `gradalign run` of N processes would (`selected[N]`: its selected ids; timings that shrink
    with N)."""
    def run(cmd, **kw):
        launched.append(cmd)
        n = int(next(a for a in cmd if a.startswith("--nproc_per_node=")).split("=")[1])
        out = Path(cmd[cmd.index("--output-dir") + 1])
        out.mkdir(parents=True)
        timings = {"rollouts": 2.0 / n, "validation_rollouts": 1.0 / n, "scoring": 1.0 / n, "selection": 0.1,
                   "training": 1.0, "evaluation": 0.5 / n, "total": 5.0 / n + 1.6}
        (out / "rounds.jsonl").write_text(json.dumps({"round": 0, "timings": timings, "candidates": 32,
                                                      "selected_ids": selected[n], "test": {"accuracy": 0.5}}) + "\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_bench_scaling_launches_each_setting_and_compares_their_rounds(tmp_path, monkeypatch):
    """`gradalign bench scaling` (a benchmark: it times real torchrun launches, benchmarks/scaling.py) on stand-in
    launches: one `gradalign run` per process count with the sizes given, the table and split from the rounds'
    records, and the check that every setting selected the same problems. That 2 processes do select what 1 does
    is test_two_process_curriculum_trains_data_parallel_on_the_shared_selection's, on real launches."""
    from gradalign.bench import scaling
    small = dict(pool_size=64, validation_size=16, test_size=16, chunk_size=32, rollout_batch=8,
                 rollouts_per_problem=4, validation_rollouts=4, steps_per_round=1, problems_per_step=4,
                 num_generations=4)
    launched, lines = [], []
    same = {1: ["a", "b"], 2: ["a", "b"]}
    monkeypatch.setattr(scaling, "subprocess", SimpleNamespace(run=fake_torchrun(launched, same)))
    result = scaling.run_scaling([1, 2], str(tmp_path / "scaling"), sizes=small, echo=lines.append)
    assert len(launched) == 2
    for n, cmd in zip((1, 2), launched):  # `gradalign run` under torchrun, with the sizes given
        head = torchrun_command(n, ["-m", "gradalign.cli", "run"])
        assert cmd[:len(head)] == head and cmd[cmd.index("--chunk-size") + 1] == "32"
    assert [r["processes"] for r in result["results"]] == [1, 2]
    assert result["same_selection"]
    assert [r["scored_per_second"] for r in result["results"]] == pytest.approx([32 / 4.0, 32 / 2.0])
    assert all(r["timings"]["training"] > 0 for r in result["results"])
    assert [row["chunk"] for row in result["division"]] == [16, 16]  # 4 blocks of 8, two per rank
    assert [row["completions_per_step"] for row in result["division"]] == [8, 8]
    text = "\n".join(lines)
    assert "speed-up" in text and "1.61×" in text  # 6.6 s / 4.1 s
    assert "Same selection in every setting: yes" in text and (tmp_path / "scaling" / "scaling.json").exists()
    swapped = {1: ["a", "b"], 2: ["b", "a"]}
    monkeypatch.setattr(scaling, "subprocess", SimpleNamespace(run=fake_torchrun([], swapped)))
    assert not scaling.run_scaling([1, 2], str(tmp_path / "other"), sizes=small, echo=None)["same_selection"]


@pytest.mark.parametrize("change,message", [
    (dict(method="cropi", offpolicy_fidelity=True), "offpolicy_fidelity (CROPI's on-policy check) runs on one process"),
    (dict(rollout_batch=32), "the validation set (16 problems) in blocks of rollout_batch 32 gives 1 blocks"),
    (dict(rollout_batch=64), "chunk_size (64 problems) in blocks of rollout_batch 64 gives 1 blocks"),
    (dict(problems_per_step=3, num_generations=3), "cannot be split evenly over 2 processes"),
])
def test_what_two_processes_cannot_share_is_refused_before_anything_runs(change, message):
    from gradalign.config import RunConfig
    from gradalign.curriculum.setup import check_sharding
    sets = unreliable_rewards(pool_size=64, validation_size=16, test_size=8, seed=0)
    cfg = RunConfig.of(**{"chunk_size": 64, "rollout_batch": 8, **change})
    check_sharding(RunConfig.of(chunk_size=64, rollout_batch=8), sets, world=2)  # the base config shares out
    with pytest.raises(ValueError, match=re.escape(message)):
        check_sharding(cfg, sets, world=2)
    check_sharding(cfg, sets, world=1)  # one process runs anything


def test_commands_that_do_not_shard_refuse_a_launcher(monkeypatch, capsys):
    from gradalign.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["methods"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gradalign: error: only 'run' and 'select' run on several processes; launch this command as one "
                   "process"]


@pytest.mark.slow
def test_trl_trainer_under_torchrun_shares_its_scoring_and_selects_as_one_process(launched):
    """`GradAlignGRPOTrainer` in an existing TRL script: launched on 2 processes, each scores half of every
    chunk, and round 0 (same weights) selects exactly what one process selects; the selection groups, gathered to
    every process, are each round's first generation on both."""
    runs = {n: json.loads(launched["out"][n]["trainer"].read_text()) for n in (1, 2)}
    assert runs[1]["processes_scoring"] == 1 and runs[2]["processes_scoring"] == 2
    same = ("round", "selected", "zero_variance")
    assert [runs[2]["history"][0][k] for k in same] == [runs[1]["history"][0][k] for k in same]
    assert len(runs[2]["history"]) == 2
    for run in runs.values():  # each round's first generation is the selection's own groups, on every process
        size = run["generation_batch_size"]  # 16 rows per process: 4 problems × 4 completions on each
        assert [h["reused"] for h in run["history"]] == [{"groups": size // 4, "completions": size}] * 2


FSDP_CASES = [
    ("fp32", "plain", 1e-5, []),  # FSDP shards, fp32: the same numbers as one process holding the whole model
    ("bf16", "fsdp", 1e-3, []),  # bf16 compute, fp32 reductions: as one FSDP process with the same precision policy
    ("fp32", "plain", 1e-5, ["checkpointing"]),  # gradient checkpointing recomputes layers (their hooks fire twice)
]


def fsdp_settings(precision: str, reference: str, options: list[str]) -> tuple[str, str]:
    """A case's settings of tests/fsdp_round.py: (one process, the reference; two processes, sharded)."""
    return f"{reference}:{precision}", ":".join(["fsdp", precision, *options])


FSDP_SETTINGS = {n: sorted({fsdp_settings(p, r, o)[n - 1] for p, r, _, o in FSDP_CASES}) for n in (1, 2)}


@pytest.fixture(scope="module")
def fsdp_rounds(tmp_path_factory, launched):
    """processes → setting → one round of tests/fsdp_round.py: the one-process settings in a launch of their own
    (FSDP needs a process group, which this process must not join), the 2-process ones in `launched`'s."""
    tmp = tmp_path_factory.mktemp("fsdp")
    out = tmp / "rounds-1.json"
    launch(torchrun_command(1, [os.path.join(TESTS, "fsdp_round.py"), str(out), *FSDP_SETTINGS[1]]), cwd=tmp)
    return {1: json.loads(out.read_text()), 2: json.loads(launched["out"][2]["fsdp"].read_text())}


@pytest.mark.slow
@pytest.mark.parametrize("precision,reference,cos_tol,options", FSDP_CASES)
def test_a_round_on_an_fsdp_sharded_model_scores_and_selects_as_one_process(fsdp_rounds, precision, reference, cos_tol,
                                                                              options):
    """The scorer on a model FSDP2 has sharded over 2 processes (each decoder layer, then the root, as accelerate
    wraps it): per-problem norms and cosines from the shards, the same selection as one process."""
    settings = fsdp_settings(precision, reference, options)
    one, two = fsdp_rounds[1][settings[0]], fsdp_rounds[2][settings[1]]
    assert two["sharded_parameters"] == 50 and (one["sharded_parameters"] > 0) == (reference == "fsdp")
    assert two["pass_rate"] == one["pass_rate"]  # identical rollouts, sampled in step on the shards
    # sharded fp32 reductions reorder sums (see above): 1e-4 ≈ 840 fp32 ulps; cos_tol is 1e-5 for fp32 and 1e-3
    # (≈ 1/8 bf16 ulp of 7.8e-3, both sides using the same bf16 policy) for bf16; a shard left out gives ~0.5.
    np.testing.assert_allclose(two["norm"], one["norm"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two["cos_val"], one["cos_val"], atol=cos_tol)
    assert two["selected"] == one["selected"]
    assert np.count_nonzero(one["cos_val"]) > 10  # real scores
    # and training's next backward on the shards is the one the whole model gives: scoring left FSDP ready
    # a full backward summed over 2 ranks vs 1, in bf16 for the bf16 case: 1e-3 ≈ 1/8 bf16 ulp, ~8400 fp32 ulps
    np.testing.assert_allclose(two["training_gradient"], one["training_gradient"], rtol=1e-3, atol=1e-6)


def test_run_under_an_accelerate_fsdp_launch_points_to_the_trl_trainer(monkeypatch):
    """`gradalign run` keeps a whole policy per process; FSDP training goes through GradAlignGRPOTrainer."""
    from gradalign.config import RunConfig
    from gradalign.curriculum.setup import join_processes
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    sets = unreliable_rewards(pool_size=16, validation_size=8, test_size=4, seed=0)
    with pytest.raises(ValueError, match="use GradAlignGRPOTrainer in a TRL script"):
        join_processes(RunConfig(), sets)
