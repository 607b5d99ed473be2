"""`report_to` as in TRL: TensorBoard event files from `gradalign run` and from `GradAlignGRPOTrainer`, with TRL's
step metrics and every round's selection record under the same logger; and a TRL run resumed from a checkpoint
selects exactly as the uninterrupted one."""

import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_curriculum_e2e import tiny_cfg
from test_trl_trainer import SELECTION, exact_match, grpo_args, rows, trainer

from gradalign.curriculum.loop import Curriculum
from gradalign.data.regimes import unreliable_rewards
from gradalign.curriculum.loggers import flatten_scalars

pytestmark = pytest.mark.slow


def scalars(log_root) -> dict[str, list[int]]:
    """Tag -> steps of every scalar in the TensorBoard event files under `log_root`."""
    out: dict[str, list[int]] = {}
    for events in sorted(log_root.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return out


def test_flatten_scalars_keeps_numbers_and_drops_ids_and_logs():
    record = {"round": 1, "selected_ids": ["a"], "train_log": [{"loss": 1}], "fallback": None, "ok": True,
              "diagnostics": {"label_free": {"score_std": 0.5, "auc": None}, "labels": {"corrupted": {"auc": 0.7}}},
              "nan": float("nan")}
    assert flatten_scalars(record) == {"selection/round": 1.0, "selection/diagnostics/label_free/score_std": 0.5,
                                       "selection/diagnostics/labels/corrupted/auc": 0.7}


def test_gradalign_run_reports_steps_and_rounds_to_tensorboard(tmp_path):
    cfg = tiny_cfg(tmp_path, report_to=["tensorboard"])
    Curriculum(cfg).run()
    tags = scalars(tmp_path / "run" / "runs")
    assert tags["train/loss"] == [1, 2, 3, 4]  # one step count across the rounds' trainers
    assert tags["train/selection/zero_variance"] == [2, 4]  # each round's record at the round's last step
    for tag in ("train/selection/diagnostics/labels/corrupted/auc", "train/selection/timings/scoring",
                "train/selection/test/accuracy", "train/reward"):
        assert tag in tags, sorted(tags)


def test_the_trl_trainer_reports_rounds_beside_trls_metrics(tmp_path):
    scenario = unreliable_rewards(pool_size=64, validation_size=8, test_size=4, seed=0)
    t = trainer(tmp_path, scenario, report_to=["tensorboard"])
    t.train()
    tags = scalars(tmp_path / "out")
    assert sorted(set(tags["train/selection/round"])) == [1, 2, 3, 4]  # every step (and the closing summary)
    for tag in ("train/loss", "train/reward", "train/selection/zero_variance",
                "train/selection/diagnostics/label_free/score_std", "train/selection/timings/scoring",
                "train/selection/no_direction_rounds"):
        assert tag in tags, sorted(tags)
    assert (tmp_path / "out" / "selection_history.jsonl").read_text().count("\n") == 2


def test_resuming_a_trl_run_from_a_checkpoint_selects_as_the_uninterrupted_run(tmp_path):
    scenario = unreliable_rewards(pool_size=64, validation_size=8, test_size=4, seed=0)
    saving = dict(max_steps=8, save_strategy="steps", save_steps=4)
    whole = trainer(tmp_path / "a", scenario, **saving)
    whole.train()
    assert [h["round"] for h in whole.selection_history] == [0, 1, 2, 3]
    checkpoint = tmp_path / "a" / "out" / "checkpoint-4"
    assert (checkpoint / "selection_history.jsonl").exists()
    shutil.copytree(checkpoint, tmp_path / "b" / "out" / "checkpoint-4")  # the run stopped after step 4
    resumed = trainer(tmp_path / "b", scenario, **saving)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 8
    assert [h["selected"] for h in resumed.selection_history] == [h["selected"] for h in whole.selection_history]
    assert (tmp_path / "b" / "out" / "selection_history.jsonl").read_text().count("\n") == 4
