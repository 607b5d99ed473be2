"""TRL's configuration, not a copy of it: one YAML carries RunConfig's selection fields and TRL's own GRPOConfig /
ModelConfig / script-argument fields under TRL's names; a `trl grpo` config runs under `gradalign run`."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from gradalign.cli import main
from gradalign.config import TRL_DEFAULTS, ConfigError, RunConfig

README = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"  # holds the tested `trl grpo` config
SELECTION_MARK = "# ... and the selection fields gradalign run adds"


def readme_yaml() -> tuple[str, str]:
    """The README's `trl grpo` config: (the part TRL reads, the selection fields added after it)."""
    match = re.search(r"<!-- tested: tests/test_trl_config.py -->\s*```yaml\n(.*?)```", README.read_text(), re.S)
    assert match, "README lost its tested trl grpo config"
    trl_part, _, selection_part = match.group(1).partition(SELECTION_MARK)
    assert selection_part, "README's trl grpo config lost its selection fields"
    return trl_part, selection_part


def test_the_readme_config_without_the_selection_fields_is_what_trl_grpo_parses(tmp_path):
    from trl import DatasetMixtureConfig, GRPOConfig, ModelConfig, TrlParser
    from trl.scripts.grpo import GRPOScriptArguments
    trl_part, selection_part = readme_yaml()
    path = tmp_path / "grpo.yaml"
    path.write_text(trl_part)
    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig))
    # bf16 false: this machine has no GPU (the YAML's bf16 is for the user's); unknown keys would raise here
    script, training, model, _ = parser.parse_args_and_config(["--config", str(path), "--bf16", "false"])
    assert script.reward_funcs == ["accuracy_reward"] and training.learning_rate == 1e-6 and model.use_peft
    added = yaml.safe_load(selection_part)
    assert added and all(key in RunConfig.__dataclass_fields__ for key in added)  # only selection fields added


def tiny_dataset(tmp_path: Path):
    """A TRL-layout dataset directory (`prompt`, `solution`, as accuracy_reward reads them) and a validation file."""
    from datasets import Dataset
    from gradalign.data.regimes import build_scenario
    scenario = build_scenario("unreliable-rewards", pool_size=32, validation_size=8, test_size=8, corrupt_fraction=0.0)
    Dataset.from_list([{"prompt": p.prompt, "solution": p.answer} for p in scenario.pool]).save_to_disk(
        tmp_path / "pool")
    validation = tmp_path / "val.jsonl"
    validation.write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n"
                                  for p in scenario.validation))
    return tmp_path / "pool", validation


@pytest.mark.slow
def test_the_readme_trl_grpo_config_runs_under_gradalign_run(tmp_path, caplog):
    trl_part, selection_part = readme_yaml()
    config = tmp_path / "grpo.yaml"
    config.write_text(trl_part + selection_part)
    pool, validation = tiny_dataset(tmp_path)
    out = tmp_path / "run"
    # the file as written, with only what this machine needs: local data, the tiny policy, no bf16, small sizes
    small = ["--dataset_name", str(pool), "--validation", str(validation), "--model_name_or_path", "tiny",
             "--bf16", "false", "--output-dir", str(out), "--chunk-size", "16", "--selection-ratio", "4",
             "--rollouts-per-problem", "4", "--validation-rollouts", "4", "--rounds", "1", "--steps-per-round", "2",
             "--problems-per-step", "4", "--num_generations", "4", "--max_completion_length", "6",
             "--eval-samples", "0", "--rollout-batch", "16", "--micro-batch", "64"]
    with caplog.at_level(logging.WARNING):
        assert main(["run", "--config", str(config), *small]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["verifier"] == "math" and saved["reward_funcs"] == ["accuracy_reward"]  # TRL's math-verify check
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = {row["learning_rate"] for row in steps if "learning_rate" in row}
    assert rates == {1e-6}  # the YAML's learning rate is what TRL trained with
    assert (out / "checkpoints" / "round-000" / "adapter_model.safetensors").exists()  # use_peft: a LoRA adapter
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # report_to: [tensorboard]
    owned = [r.getMessage() for r in caplog.records if "round schedule sets" in r.getMessage()]
    assert len(owned) == 1 and all(name in owned[0] for name in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "report_to"))


def test_every_trl_field_reaches_the_rounds_trainer_and_the_schedule_sets_its_own(tmp_path):
    from gradalign.curriculum.trl_bridge import grpo_args, new_optimizer
    from gradalign.policy.tiny import build_tiny_model, build_tokenizer
    cfg = RunConfig.of(problems_per_step=4, num_generations=4, top_k=5, repetition_penalty=1.1, beta=0.1,
                       loss_type="grpo", epsilon=0.3, mask_truncated_completions=True, adam_beta2=0.99,
                       weight_decay=0.01, per_device_train_batch_size=3, lr_scheduler_type="cosine",
                       logging_steps=50, report_to=["tensorboard"])
    args = grpo_args(cfg, seed=7, max_steps=3, output_dir=str(tmp_path))  # else a temporary folder is left behind
    assert (args.top_k, args.repetition_penalty, args.beta, args.loss_type, args.epsilon) == (5, 1.1, 0.1, "grpo", 0.3)
    assert args.mask_truncated_completions and args.learning_rate == TRL_DEFAULTS["learning_rate"][0]
    # the round schedule's own: B x G completions a step, constant rate, every step logged, gradalign's loggers
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_steps) == (16, 1, 3)
    assert args.lr_scheduler_type == "constant" and args.logging_steps == 1 and args.report_to == []
    assert args.seed == 7 and not args.bf16
    optimizer, _ = new_optimizer(build_tiny_model(build_tokenizer(), seed=0), cfg)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0.01 and group["lr"] == 1e-4


def test_a_saved_config_loads_back_equal_with_its_trl_fields(tmp_path):
    cfg = RunConfig.of(method="random", learning_rate=3e-5, temperature=1.0, use_peft=True, lora_r=8,
                       report_to=["tensorboard"], dataset_train_split="train")
    cfg.save(tmp_path / "config.yaml")
    again = RunConfig.from_sources(str(tmp_path / "config.yaml"))
    assert again.first_difference(cfg) is None and again.trl == cfg.trl
    assert (again.grpo.learning_rate, again.model_args.lora_r) == (3e-5, 8)
    assert RunConfig.of(learning_rate=1e-5).first_difference(cfg) == "method"
    assert RunConfig.of(method="random", learning_rate=1e-5).first_difference(cfg) == "learning_rate"


@pytest.mark.parametrize("text, message", [
    ("learning_rate: fast\n", "run.yaml: 'learning_rate' must be a finite number (got 'fast')"),
    ("use_peft: 3\n", "run.yaml: 'use_peft' must be true or false (got 3)"),
    ("lerning_rate: 1.0e-5\n", "run.yaml: unknown config key 'lerning_rate'"),
    ("max_new_tokens: 64\n", "run.yaml: 'max_new_tokens' is now TRL's 'max_completion_length'"),
    ("model: Qwen/Qwen2.5-0.5B\n", "run.yaml: 'model' is now TRL's 'model_name_or_path'"),
    ("temperature: -1\n", "run.yaml: 'temperature' must be > 0 (got -1)"),
    ("eval_strategy: sideways\n", "config: TRL's GRPOConfig refused these values: sideways is not a valid "
                                   "IntervalStrategy"),
    ("reward_funcs: [my_lib.rewards.length]\n", "run.yaml: 'reward_funcs' cannot be used by gradalign run"),
    ("reward_model_name_or_path: some/rm\n", "run.yaml: 'reward_model_name_or_path' cannot be used by gradalign run"),
    ("dataset_streaming: true\n", "run.yaml: 'dataset_streaming' must be false"),
    ("load_in_4bit: true\n", "run.yaml: 'load_in_4bit' must be false"),
    ("dataset_name: a/b\npool: c.jsonl\n", "run.yaml: 'dataset_name' and 'pool' name two pools"),
    ("env: [A]\n", "run.yaml: 'env' must be a mapping of environment variables"),
])
def test_bad_trl_values_are_one_line_errors_naming_the_file_and_key(tmp_path, capsys, text, message):
    (tmp_path / "run.yaml").write_text(text)
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err.replace(str(tmp_path) + "/", "")
    assert not (tmp_path / "out").exists()  # nothing computed, nothing written


def test_trl_flags_are_parsed_by_trl_and_override_the_yaml(tmp_path):
    from gradalign.cli import parse_command_line
    from gradalign.flags import overrides
    (tmp_path / "run.yaml").write_text("learning_rate: 1.0e-5\nuse_peft: true\nmethod: random\n")
    args = parse_command_line(["run", "--config", str(tmp_path / "run.yaml"), "--learning-rate", "2e-5",
                               "--use_peft", "false", "--report_to", "tensorboard", "--chunk_size", "32"])
    cfg = RunConfig.from_sources(args.config, overrides(args))
    assert cfg.grpo.learning_rate == 2e-5 and not cfg.model_args.use_peft and cfg.value("report_to") == "tensorboard"
    assert cfg.method == "random" and cfg.chunk_size == 32  # our fields: both spellings


@pytest.mark.parametrize("argv, message", [
    (["--model", "tiny"], "--model is now TRL's --model_name_or_path"),
    (["--pool-split", "train"], "--pool-split is now TRL's --dataset_train_split"),
    (["--learning_rate", "x"], "argument --learning_rate/--learning-rate: invalid float value: 'x'"),
    (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
])
def test_bad_flags_are_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["run", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


def test_trainer_selection_takes_trls_fields_from_args_only(tmp_path):
    from trl import GRPOConfig
    from gradalign.curriculum.trl_selection import TrainerArgumentError, selection_config
    args = GRPOConfig(output_dir=str(tmp_path), temperature=0.9, top_p=0.8, max_completion_length=7,
                      num_generations=4, use_cpu=True, bf16=False, report_to=[])
    cfg = selection_config(RunConfig(chunk_size=32), args)
    assert (cfg.grpo.temperature, cfg.grpo.top_p, cfg.grpo.max_completion_length) == (0.9, 0.8, 7)
    with pytest.raises(TrainerArgumentError, match="sets TRL's 'temperature'; set it on args"):
        selection_config(RunConfig.of(temperature=0.5), args)


def test_readme_lists_every_default_that_differs_from_trls():
    text = README.read_text()
    missing = [name for name, (value, why) in TRL_DEFAULTS.items() if f"| `{name}` | `{value}` | {why} |" not in text]
    assert not missing, f"README's table of defaults that differ from TRL's lacks or misstates: {missing}"


def test_of_refuses_unknown_keys_with_a_config_error():
    with pytest.raises(ConfigError, match="'lerning_rate' is an unknown config key"):
        RunConfig.of(lerning_rate=1e-5)
