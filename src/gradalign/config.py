"""`RunConfig`: the selection knobs of a curriculum run, in one documented dataclass, beside TRL's own configuration.

One YAML (`gradalign run --config run.yaml`) and one command line carry both: our fields, and every field of TRL's
`GRPOConfig`, `ModelConfig` and `trl grpo`'s script arguments under TRL's names, kept in `RunConfig.trl` and
parsed by TRL's own dataclasses (`cfg.grpo`, `cfg.model_args`). A config written for `trl grpo` runs under
`gradalign run` with the selection fields added. The resolved config (both parts, flat) is written into the run
directory.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import numbers
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _f(default: Any, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# Each built-in scenario's builder parameter -> the RunConfig field that sets it (smollm2-arithmetic has none).
SCENARIO_KNOBS: dict[str, dict[str, str]] = {
    "unreliable-rewards": {"corrupt_fraction": "corrupt_fraction", "corruption": "corruption", "families": "families"},
    "imbalance": {"target": "target_family", "target_share": "target_share", "others": "other_families"},
    "low-utility": {"useful_share": "useful_share", "trivial_share": "trivial_share", "useful": "useful_families"},
    "gsm-symbolic": {"corrupt_fraction": "corrupt_fraction", "corruption": "corruption", "gsm_share": "gsm_share"},
    "smollm2-coin": {"corrupt_fraction": "corrupt_fraction", "corruption": "corruption"},
    "smollm2-skewed": {"target_share": "target_share"},
    "mixed": {"target": "target_family", "target_share": "target_share", "others": "other_families",
              "useful_share": "useful_share", "trivial_share": "trivial_share", "corrupt_fraction": "corrupt_fraction",
              "corruption": "corruption"},
}
SCENARIO_FIELDS = tuple(dict.fromkeys(name for knobs in SCENARIO_KNOBS.values() for name in knobs.values()))


class ConfigError(ValueError):
    """A bad value of one config key: one line naming the key, and where the value came from (`at`)."""

    def __init__(self, key: str, detail: str, source: str = "config"):
        self.key, self.detail, self.source = key, detail, source
        where = f"config: '{key}' ({source})" if source.startswith("--") else f"{source}: '{key}'"
        super().__init__(f"{where} {detail}")

    def at(self, source: str) -> "ConfigError":
        """The same error, said of a YAML file (`run.yaml: 'rounds' ...`) or a flag (`config: 'rounds' (--rounds)`)."""
        return ConfigError(self.key, self.detail, source)


# Value ranges beyond the types (a number outside them is refused before anything is written); TRL's fields that
# selection itself reads are checked here too, so a bad one is a one-line error before TRL sees it.
POSITIVE_INTS = ("lora_r", "lora_alpha", "chunk_size", "selection_ratio", "rollouts_per_problem", "rollout_batch",
                 "validation_rollouts", "rounds", "steps_per_round", "problems_per_step", "num_generations",
                 "max_completion_length", "num_iterations", "projection_dim", "warmup_problems", "warmup_steps",
                 "offline_validation_rollouts", "validation_per_set", "micro_batch", "pool_size",
                 "validation_every")
# learning_rate 0 is a frozen run (the tests use it to compare sharded sampling with one process)
NON_NEGATIVE = ("sequential_rollouts", "seed", "validation_size", "test_size", "eval_samples", "weight_decay", "beta",
                "kl_beta", "learning_rate")
POSITIVE = ("temperature", "max_grad_norm", "epsilon", "learnalign_temperature", "offline_temperature")
CHOICES = {"advantage_scale": ("none", "group"), "validation_direction": ("pooled", "mean-unit"),
           "zero_variance": ("exclude", "score-zero"), "schedule": ("rounds", "batch"),
           "no_direction": ("auto", "error", "random", "previous"),
           # TRL 1.x's loss types that run with its default token-level importance sampling (luspo needs sequence)
           "loss_type": ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo"),
           "scale_rewards": ("group", "batch", "none")}

# ── TRL's own configuration ──────────────────────────────────────────────────────────────────────────────
# Where gradalign's defaults differ from TRL's, and why (docs/configuration.md, TRL's own fields: the table of our
# defaults is this one).
TRL_DEFAULTS: dict[str, tuple[Any, str]] = {
    "model_name_or_path": ("tiny", "the built-in policy, warm-started and cached: the default path downloads nothing "
                           "(TRL: none)"),
    "learning_rate": (1e-4, "short runs of small policies on CPU; TRL's 1e-6 is for 1B+ models"),
    "temperature": (0.7, "the tiny policy's rollouts stay on task (TRL: 1.0)"),
    "top_p": (0.95, "the same (TRL: 1.0)"),
    "max_completion_length": (6, "the built-in arithmetic is answered in a few tokens (TRL: 512)"),
    "bf16": (None, "unset: bf16 autocast where the GPU supports it, fp32 on CPU (TRL: true, which fails on CPU)"),
    "lora_target_modules": (["all-linear"], "an adapter on every linear layer, as LESS and most recipes train "
                            "(TRL: none, peft's per-architecture default)"),
}
# Renamed to TRL's names: an old run directory's config.yaml, or an old habit, gets told the new name.
RENAMED = {"model": "model_name_or_path", "max_new_tokens": "max_completion_length",
           "pool_split": "dataset_train_split", "pool_config": "dataset_config"}
SHARED = ("output_dir", "seed")  # one value for the run and for TRL: RunConfig fields that TRL's trainer receives
# GRPOConfig fields the round schedule sets itself in `gradalign run`: one trainer per round over exactly the
# selected problems, a constant learning rate and our AdamW carried across rounds, our loggers (one step count over
# every round's trainer), our own resume. The config's values of these are not used (a warning names them).
SCHEDULE_OWNED = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
                  "generation_batch_size", "max_steps", "num_train_epochs", "lr_scheduler_type", "lr_scheduler_kwargs",
                  "warmup_steps", "warmup_ratio", "logging_steps", "save_strategy", "save_steps",
                  "resume_from_checkpoint", "report_to", "optim", "use_cpu")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# YAML 1.1 (PyYAML) reads `1e-4` (no dot) as a string; a float key given that spelling means the number
_YAML_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def replay_obstacle(use_vllm: bool, vllm_importance_sampling_correction: bool) -> str | None:
    """Why training cannot take selection rollouts under these TRL settings (None: it can). With vLLM, TRL corrects
    every completion by its vLLM sampling log-probs (`GRPOTrainer._generate_and_score_completions`: `old_per_token_
    logps - sampling_per_token_logps`); a generation that replays selection completions returns none (`trl_bridge.
    ReplayingGRPOTrainer`), so that correction would have nothing to subtract."""
    if use_vllm and vllm_importance_sampling_correction:
        return ("TRL's vLLM importance-sampling correction needs each completion's vLLM log-probs, which replayed "
                "selection completions do not carry (set vllm_importance_sampling_correction: false to reuse them)")
    return None


def names_list(default) -> bool:
    """Whether a list field holds names (strings, any count): its default is a list of strings, or empty."""
    return isinstance(default, list) and all(isinstance(x, str) for x in default)


@dataclass
class RunConfig:
    # ── run ──────────────────────────────────────────────────────────────────────────────────────────────
    output_dir: str = _f("runs/gradalign", "Run directory: config, rounds, metrics, checkpoints, plots, summary.")
    seed: int = _f(0, "One seed for chunking, sampling, scenario building, tie-breaks and TRL.")
    # ── data ─────────────────────────────────────────────────────────────────────────────────────────────
    scenario: str = _f("unreliable-rewards", "Built-in scenario used when `pool` is not given "
                       "(unreliable-rewards, imbalance, low-utility, mixed: all three at once; for "
                       "--model_name_or_path smollm2-135m with --verifier task: smollm2-arithmetic, smollm2-coin (with coin-flip rewards), "
                       "smollm2-skewed (a minority target task) and gsm-symbolic (word problems)).")
    pool: str | None = _f(None, "Pool file (.jsonl/.json/.parquet, TRL or verl layout), or a `datasets` dataset "
                          "(hub id or save_to_disk directory).")
    validation: str | None = _f(None, "Trusted validation file or dataset (same forms).")
    test: str | None = _f(None, "Held-out test file or dataset (same forms); optional for your own data.")
    pool_size: int = _f(2000, "Built-in scenarios: pool size.")
    validation_size: int = _f(64, "Built-in scenarios: validation set size.")
    test_size: int = _f(256, "Built-in scenarios: test set size.")
    corrupt_fraction: float = _f(0.5, "unreliable-rewards, smollm2-coin and gsm-symbolic: share of the pool with "
                                 "corrupted rewards (mixed: share of its useful part).")
    corruption: str | None = _f(None, "unreliable-rewards, smollm2-coin, gsm-symbolic and mixed: how a corrupted "
                                "problem is rewarded: coin (a fair coin per completion), wrong-answer (the verifier "
                                "against a fixed wrong answer), slips (a mostly-right judge: the verifier, its reward "
                                "flipped on a fixed pseudo-random tenth of the completions) or mixed (half coin, half "
                                "wrong-answer) (default: the scenario's: mixed for mixed, else coin).")
    families: list = _f(["add", "sub"], "unreliable-rewards: task families of every set, in equal shares.")
    target_family: str = _f("sub", "imbalance and mixed: the target task family (a small share of the pool; "
                            "validation and test are this family only).")
    other_families: list = _f(["add", "sum3"], "imbalance and mixed: the other task families, sharing the rest of "
                              "the pool (mixed: of its useful part) equally (and held out as the forgetting test).")
    target_share: float = _f(0.1, "imbalance and mixed: share of the pool from the target family (smollm2-skewed: "
                             "from its target task, chain_sum).")
    useful_families: list = _f(["add", "sub"], "low-utility: the useful task families (validation and test are "
                               "these only).")
    useful_share: float | None = _f(None, "low-utility and mixed: share of the pool from the useful (task) families "
                                    "(default: the scenario's: 0.2 for low-utility, 0.5 for mixed).")
    trivial_share: float = _f(0.5, "low-utility and mixed: share of the rest of the pool that is trivial (answer "
                              "0); the remainder is unsolvable.")
    gsm_share: float = _f(0.5, "gsm-symbolic: share of every set that is GSM8K-style word problems (the rest is "
                          "smollm2-arithmetic's mix).")
    verifier: str = _f("exact", "Verifier used for training AND selection: exact, math (math-verify), number "
                       "(math-verify, the answer a number: an arithmetic question's own expression copied back does "
                       "not count), countdown (safe expression check) or task (per problem, from "
                       "metadata['verifier']).")
    verifier_timeout: float = _f(5.0, "math, number (and task) verifier: seconds per completion before it scores 0 "
                                 "(> 0). exact and countdown run in-process without one: linear-time in the capped "
                                 "completion, so bounded by construction (well under 1 ms a call).")
    verifier_max_chars: int = _f(4096, "Every verifier (exact, math, number, countdown, task): a completion longer "
                                 "than this is cut to its first verifier_max_chars characters, then the usual answer "
                                 "extraction applies to the rest.")
    validation_split: str = _f("train", "validation given as a `datasets` dataset: its split.")
    validation_config: str | None = _f(None, "validation given as a `datasets` dataset: its configuration name.")
    test_split: str = _f("test", "test given as a `datasets` dataset: its split.")
    test_config: str | None = _f(None, "test given as a `datasets` dataset: its configuration name.")
    prompt_column: str = _f("prompt", "Column holding the prompt (files and datasets).")
    answer_column: str = _f("answer", "Column holding the ground-truth answer (files and datasets).")
    id_column: str = _f("id", "Column holding the problem id (optional; row numbers otherwise).")
    source_column: str = _f("source", "Column holding the task family / data source (optional).")
    # ── selection ────────────────────────────────────────────────────────────────────────────────────────
    method: str = _f("gradalign-lfdr", "Selection method (see `gradalign methods`; `gradalign` is the published "
                     "GradAlign).")
    chunk_size: int = _f(256, "M: candidates scored per round (reference 5120).")
    selection_ratio: int = _f(8, "q: keep the top floor(M/q) of each chunk (reference 20).")
    rollouts_per_problem: int = _f(8, "k_r: completions per candidate at selection time.")
    sequential_rollouts: int = _f(0, "Sequential sampling of candidates: sample this many completions first and "
                                  "the rest of the group only for candidates whose first ones disagree (those that "
                                  "agree are zero-variance at this count, and not eligible); 0 (default): the whole "
                                  "group at once. >= 2, and below the group size (rollouts_per_problem; "
                                  "num_generations under schedule batch).")
    rollout_batch: int = _f(64, "Problems per generate call; also the unit of rollout seeding and of sharding "
                            "across processes (each process owns whole blocks; results do not depend on their number).")
    validation_rollouts: int = _f(8, "k_v: completions per validation problem.")
    advantage_scale: str = _f("none", "Advantages for scoring: none (r - mean, reference) or group (/ (std+eps)).")
    validation_direction: str = _f("pooled", "pooled (reference: surrogate over all validation completions) "
                                   "or mean-unit (mean of unit per-problem gradients).")
    zero_variance: str = _f("exclude", "Zero-variance candidates: exclude (default) or score-zero (reference).")
    passrate_band: list = _f([0.2, 0.8], "passrate-band method: [a, b].")
    no_direction: str = _f("auto", "If every validation group is zero-variance: error, random (select "
                           "uniformly this round), previous (reuse the last direction; uniform before there is "
                           "one) or auto (error in gradalign run and select; previous in GradAlignGRPOTrainer, "
                           "which must not stop a user's training run).")
    gradient_backend: str = _f("auto", "Per-problem gradient signals, all exact: auto (forward where the method "
                               "reads dots only, as the default and gradalign-z do; onepass otherwise), forward "
                               "(per-completion dots by a JVP along the direction, each prompt run once; no norms), "
                               "onepass (one forward+backward; norms and dots), naive (one full gradient per "
                               "problem; the reference) or func (torch.func, per-problem).")
    micro_batch: int = _f(256, "Completions per forward/backward when computing gradient signals.")
    score_parameters: list = _f([], "Score only these parameters (every method that scores gradients): globs over "
                                "module-qualified names (lm_head.*, *.lora_*) and last_blocks:K (the last K blocks). "
                                "Cheaper and approximate: `gradalign bench subset` measures cost and fidelity. "
                                "Empty (default): the whole trainable model.")
    projection: str = _f("auto", "Projected features (LearnAlign, CROPI): auto (LearnAlign khatri-rao-energy, "
                         "recommended by `gradalign bench fidelity`; CROPI sparse-countsketch, the paper's 10% of "
                         "the coordinates with a CountSketch map), khatri-rao-energy, khatri-rao, factored, "
                         "factored-energy, sparse (the paper's Gaussian map), sparse-countsketch or dense.")
    projection_dim: int = _f(8192, "Dimension d of the projected features.")
    # ── LearnAlign (METHODS.md §2) ───────────────────────────────────────────────────────────────────────
    warmup_problems: int = _f(64, "LearnAlign: random pool problems the warm-up GRPO trains on (paper: 300 of 7.5k).")
    warmup_steps: int = _f(8, "LearnAlign: GRPO steps of the warm-up. It trains a copy of the policy; the copy "
                           "scores, and the policy itself trains only on the selection.")
    kl_beta: float = _f(0.04, "LearnAlign: KL coefficient in the scoring gradient, against the policy the warm-up "
                        "started from (paper 0.04).")
    learnalign_temperature: float = _f(1.0, "LearnAlign: sampling temperature of the scoring rollouts (paper 1.0).")
    # ── CROPI (METHODS.md §3) ────────────────────────────────────────────────────────────────────────────
    offline_rollouts: str | None = _f(None, "CROPI: the pool's offline rollout store (a directory made by "
                                      "`gradalign rollouts`, or made at the run's start; default OUTPUT_DIR/offline/pool).")
    offline_validation: str | None = _f(None, "CROPI: the validation set's offline rollout store (default "
                                        "OUTPUT_DIR/offline/validation).")
    offline_temperature: float = _f(0.5, "CROPI: temperature of the offline rollouts from the behaviour policy "
                                    "(reference 0.5; top-p 1, so that π_θ/β is exactly 1 at θ = β).")
    offline_validation_rollouts: int = _f(32, "CROPI: offline completions per validation problem (reference 32).")
    validation_per_set: int = _f(100, "CROPI: validation problems per set (one set per source) whose mean projected "
                                 "gradient is that set's direction.")
    offpolicy_fidelity: bool = _f(False, "CROPI: every stage, also roll out the chunk and validation on-policy and "
                                  "record how off-policy gradients and selections agree with on-policy ones.")
    reset_optimizer: bool = _f(False, "A fresh AdamW state at every round / stage (default: carried across).")
    # ── training: the round schedule (TRL's GRPOConfig holds the rest) ───────────────────────────────────
    rounds: int = _f(8, "R: selection rounds.")
    steps_per_round: int = _f(8, "T: GRPO steps on each round's selection.")
    problems_per_step: int = _f(16, "B: problems per GRPO step (each with num_generations completions).")
    schedule: str = _f("rounds", "rounds (METHODS.md §1: select floor(M/q) of a chunk, then steps_per_round steps on "
                       "them) or batch (select inside every generation batch: roll out ceil(oversample * B) fresh "
                       "problems with num_generations completions each, train on the best B with those very "
                       "completions; the validation direction is measured at most once per round, when a step "
                       "first needs it). batch applies to methods "
                       "that score their candidates' on-policy rollouts; the others keep their own schedule.")
    oversample: float = _f(2.0, "schedule batch: candidates rolled out per GRPO step, as a multiple of B (>= 1).")
    pad_steps: bool = _f(True, "schedule batch: a step whose chosen candidates hold fewer than B groups that can "
                         "teach (rewards that vary, no answer rewarded two ways) is padded to B groups, as plain "
                         "GRPO's batch is (the method's ranking, then stream order). false: it trains on those "
                         "groups only (a smaller, cheaper step without the noise; none: one zero-variance group, "
                         "which moves nothing but the optimiser's momentum). Measured: false paid where a step's "
                         "candidates hold few clean groups that vary (SmolLM2 with coin flips); true where flagged "
                         "groups still teach (a mostly-right judge).")
    scale_short_steps: bool = _f(False, "pad_steps false: a step's learning rate is scaled by the share of B it trains "
                                 "on (groups that can teach / B; a step with none moves nothing). Without it a step "
                                 "of one group moves the weights as far as a step of B: its gradient is clipped to "
                                 "max_grad_norm and normalised by AdamW like any other, from an eighth of the "
                                 "samples at B = 4, k = 8. Measured on SmolLM2 with coin flips: level with "
                                 "unscaled steps (8 seeds).")
    max_draws: int = _f(1, "pad_steps false: a step whose chosen candidates hold fewer than B groups that can teach "
                        "rolls out the next ceil(oversample * B) candidates of the stream and adds their best, until "
                        "it has B or has drawn max_draws times (DAPO's dynamic sampling: keep sampling until the "
                        "batch is full). Every draw is counted as selection's cost. 1: one draw, short steps stay "
                        "short.")
    validation_every: int = _f(1, "Rounds between measurements of the validation direction (1, default: every round, "
                               "as METHODS.md §1); in between, selections score against the last one. A resumed run "
                               "measures it again at its first round.")
    reuse_rollouts: bool = _f(True, "Train on the selected problems' selection rollouts where they are on-policy "
                              "(the round's first GRPO step, same weights and sampling settings) instead of sampling "
                              "them again.")
    # ── evaluation ───────────────────────────────────────────────────────────────────────────────────────
    eval_samples: int = _f(4, "Test metric: k > 0 is mean@k sampled at the training temperature; 0 is greedy pass@1.")
    device: str = _f("auto", "auto, cpu or cuda.")
    # ── TRL ──────────────────────────────────────────────────────────────────────────────────────────────
    trl: dict = _f({}, "TRL's own fields this config sets (GRPOConfig, ModelConfig, `trl grpo`'s script arguments), "
                   "by TRL's names; write them at the top level of the YAML or as TRL's flags (--learning_rate).")

    def __post_init__(self):
        self.validate()

    @classmethod
    def of(cls, **values) -> "RunConfig":
        """A config from one flat mapping, as a YAML file or the command line gives it: our fields by name, and
        TRL's fields (GRPOConfig, ModelConfig, script arguments) by theirs, into `trl`."""
        ours = {f.name for f in dataclasses.fields(cls)}
        mine, theirs = {}, dict(values.pop("trl", None) or {})
        for key, value in values.items():
            if key in ours:
                mine[key] = value
            elif key in trl_fields():
                theirs[key] = value
            else:
                raise ConfigError(key, unknown_key_detail(key))
        return cls(**mine, trl=theirs)

    def value(self, name: str) -> Any:
        """A field's value, ours or TRL's (the config's, else gradalign's default where it differs, else TRL's)."""
        if name in self.__dataclass_fields__:
            return getattr(self, name)
        if name in self.trl:
            return self.trl[name]
        if name in TRL_DEFAULTS:
            return TRL_DEFAULTS[name][0]
        return trl_fields()[name].default

    @classmethod
    def check_type(cls, name: str, value: Any) -> None:
        """`value` has the declared type of field `name`: ints are ints (not bools, not 1.7), floats are finite
        numbers (ints too), strings non-empty strings (Optional ones also None), lists lists of the default's
        element type (and its length, for lists of numbers). ConfigError naming the key otherwise."""
        kind, default = _field_kinds()[name]
        optional = type(None) in typing.get_args(kind)
        if value is None and optional:
            return
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
        if base is bool:
            ok, what = isinstance(value, bool), "true or false"
        elif base is int:
            ok, what = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
        elif base is float:
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            ok, what = number and math.isfinite(value), "a finite number" if number else "a number"
            what += " or null" if optional else ""
        elif base is str:
            ok, what = isinstance(value, str) and value != "", "a non-empty string" + (" or null" if optional else "")
        elif base is list and names_list(default):
            ok = isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)
            what = "a list of names"
        elif base is dict:
            ok, what = isinstance(value, dict), "a mapping"
        elif base is list:
            ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in value)
            what = f"a list of {len(default)} numbers"
        else:  # pragma: no cover - every field's type is one of the above
            return
        if not ok:
            raise ConfigError(name, f"must be {what} (got {value!r})")

    def validate(self) -> None:
        """Cheap checks that catch a bad config before anything is computed (the types are checked first)."""
        for f in dataclasses.fields(self):
            self.check_type(f.name, getattr(self, f.name))
        for key, value in self.trl.items():
            check_trl_type(key, value)
        for name in POSITIVE_INTS:
            if self.value(name) < 1:
                raise ConfigError(name, f"must be >= 1 (got {self.value(name)!r})")
        for name in NON_NEGATIVE:
            if self.value(name) < 0:
                raise ConfigError(name, f"must be >= 0 (got {self.value(name)!r})")
        for name in POSITIVE:
            if self.value(name) <= 0:
                raise ConfigError(name, f"must be > 0 (got {self.value(name)!r})")
        if not 0 <= self.value("lora_dropout") < 1:
            raise ConfigError("lora_dropout", f"must be in [0, 1) (got {self.value('lora_dropout')!r})")
        if not 0 < self.value("top_p") <= 1:
            raise ConfigError("top_p", f"must be in (0, 1] (got {self.value('top_p')!r})")
        lo, hi = self.passrate_band
        if not 0 <= lo <= hi <= 1:
            raise ConfigError("passrate_band", f"must be [a, b] with 0 <= a <= b <= 1 (got {list(self.passrate_band)})")
        if self.value("use_peft") and self.value("beta"):  # refused before a model loads, not at round 2's trainer
            raise ConfigError("beta", f"must be 0 with use_peft (got {self.value('beta')!r}): TRL copies a PeftModel's "
                                      f"adapter into a 'ref' adapter for the KL term, and the next round's trainer "
                                      f"would add it a second time")
        if self.value("num_generations") < 2:
            raise ConfigError("num_generations", "must be >= 2 (GRPO needs groups that can disagree)")
        for name, allowed in CHOICES.items():
            if self.value(name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)} (got '{self.value(name)}')")
        from .gradients.scope import ScopeError, check_patterns
        try:
            check_patterns(self.score_parameters)
        except ScopeError as e:
            raise ConfigError("score_parameters", e.detail) from None
        if not DEVICE.fullmatch(self.device):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N (got '{self.device}')")
        from .gradients.projections import VARIANTS
        if self.projection != "auto" and self.projection not in VARIANTS:
            raise ConfigError("projection", f"must be auto or one of {', '.join(VARIANTS)} (got '{self.projection}')")
        if self.oversample < 1:
            raise ConfigError("oversample", f"must be >= 1 (got {self.oversample!r}): each step trains on B of the "
                                            f"candidates it rolled out")
        if self.max_draws < 1:
            raise ConfigError("max_draws", f"must be >= 1 (got {self.max_draws!r}): a step draws its candidates once")
        if self.max_draws > 1 and (self.schedule != "batch" or self.pad_steps):
            raise ConfigError("max_draws", "refills the short steps of schedule batch with pad_steps false "
                                           f"(got schedule {self.schedule}, pad_steps {self.pad_steps})")
        if self.scale_short_steps and (self.schedule != "batch" or self.pad_steps):
            raise ConfigError("scale_short_steps", "scales the short steps of schedule batch with pad_steps false "
                                                   f"(got schedule {self.schedule}, pad_steps {self.pad_steps})")
        reason = replay_obstacle(self.value("use_vllm"), self.value("vllm_importance_sampling_correction"))
        if self.schedule == "batch" and reason:
            raise ConfigError("schedule", f"batch trains only on its selection rollouts, and {reason}")
        group = self.value("num_generations") if self.schedule == "batch" else self.rollouts_per_problem
        if self.sequential_rollouts and not 2 <= self.sequential_rollouts < group:
            raise ConfigError("sequential_rollouts", f"must be 0 (off) or in [2, {group - 1}]: at least two "
                                                     f"completions can disagree, and fewer than the group's {group} "
                                                     f"(got {self.sequential_rollouts})")
        if self.steps_per_round % self.value("num_iterations"):
            raise ConfigError("steps_per_round", f"must be a multiple of 'num_iterations' (got {self.steps_per_round} "
                                                 f"and {self.value('num_iterations')})")
        self._validate_scenario_knobs()
        self._validate_verifier_knobs()
        self._apply_script_arguments()
        self._build_trl_configs()

    def _apply_script_arguments(self) -> None:
        """`trl grpo`'s script arguments: `dataset_name` is TRL's name for the pool (with `dataset_config` and
        `dataset_train_split`); `reward_funcs: [accuracy_reward]` is TRL's math-verify check, our verifier math.
        What gradalign run cannot honour is refused in one line."""
        name = self.trl.get("dataset_name")
        if name is not None and self.pool not in (None, name):
            raise ConfigError("dataset_name", f"and 'pool' name two pools ('{name}' and '{self.pool}'); keep one")
        if name is not None:
            self.pool = name
        if self.trl.get("dataset_streaming"):
            raise ConfigError("dataset_streaming", "must be false: selection picks problems out of chunks of the "
                                                   "pool, which a streamed dataset cannot give")
        if self.trl.get("reward_model_name_or_path") is not None or set(self.trl.get("reward_funcs") or ()) - {
                "accuracy_reward"}:
            key = "reward_funcs" if self.trl.get("reward_funcs") else "reward_model_name_or_path"
            raise ConfigError(key, "cannot be used by gradalign run, which rewards training and selection with its "
                                   "verifier (`verifier`; TRL's accuracy_reward is verifier math); for your own reward "
                                   "functions or reward model use GradAlignGRPOTrainer in your script")
        if self.trl.get("reward_funcs") and self.verifier == "exact":
            self.verifier = "math"
        for key in ("load_in_4bit", "load_in_8bit"):
            if self.trl.get(key):
                raise ConfigError(key, "must be false: exact per-problem gradients need the policy's weights in "
                                       "floating point (train a LoRA adapter with use_peft instead)")

    def _trl_values(self) -> dict[str, Any]:
        """The TRL fields this config sets, over gradalign's defaults where they differ from TRL's."""
        defaults = {name: default for name, (default, _) in TRL_DEFAULTS.items() if default is not None}
        return {**defaults, **self.trl}

    def grpo_values(self) -> dict[str, Any]:
        """What every round's GRPOConfig is built from: this config's TRL fields over gradalign's defaults, and the
        round schedule's own fields (`SCHEDULE_OWNED`) as one process runs them; `trl_bridge.grpo_args` sets the
        round's seed, step count, device and share of the batch."""
        from trl import GRPOConfig
        grpo = {k: v for k, v in self._trl_values().items()
                if trl_fields()[k].owner is GRPOConfig and k not in SCHEDULE_OWNED}
        grpo.update(output_dir=self.output_dir, seed=self.seed, max_steps=self.rounds * self.steps_per_round,
                    per_device_train_batch_size=self.problems_per_step * self.value("num_generations"),
                    gradient_accumulation_steps=1, steps_per_generation=1, lr_scheduler_type="constant",
                    warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=self.device == "cpu",
                    bf16=self.trl.get("bf16", False),  # unset: chosen per device (trl_bridge.bf16_autocast)
                    disable_tqdm=True, dataloader_num_workers=0)
        return grpo

    def _build_trl_configs(self) -> None:
        """`self.grpo`: GRPOConfig's values for this config (TRL's defaults, gradalign's where they differ, the
        config's), read by selection; `self.model_args`: TRL's ModelConfig itself. Building a real GRPOConfig
        resets accelerate's state (TrainingArguments sets up devices), which must not happen under a running
        trainer: `check_with_trl` builds one where that is safe, before a run computes anything."""
        from trl import GRPOConfig, ModelConfig
        defaults = {name: f.default for name, f in trl_fields().items() if f.owner is GRPOConfig}
        object.__setattr__(self, "grpo", types.SimpleNamespace(**{**defaults, **self.grpo_values()}))
        try:
            object.__setattr__(self, "model_args", ModelConfig(
                **{k: v for k, v in self._trl_values().items() if trl_fields()[k].owner is ModelConfig}))
        except (ValueError, TypeError) as e:
            raise ValueError(f"config: TRL's ModelConfig refused these values: {_reason(e)}") from None

    def check_with_trl(self) -> None:
        """TRL's own checks of the GRPOConfig every round's trainer gets (one line if it refuses). Call it before a
        run starts, never under a running trainer (it resets accelerate's state)."""
        try:
            build_grpo_config(self.grpo_values())
        except (ValueError, TypeError) as e:
            raise ValueError(f"config: TRL's GRPOConfig refused these values: {_reason(e)}") from None

    def _validate_scenario_knobs(self) -> None:
        """Ranges and names of the scenario knobs (their types are checked with every field's, in `validate`)."""
        from .data.tasks import FAMILIES
        from .data.regimes import POOL_CORRUPTIONS
        if self.corruption is not None and self.corruption not in POOL_CORRUPTIONS:
            raise ConfigError("corruption", f"must be one of {', '.join(POOL_CORRUPTIONS)} (got '{self.corruption}')")
        for name in ("corrupt_fraction", "target_share", "useful_share", "trivial_share", "gsm_share"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(name, f"must be a number in [0, 1] (got {value!r})")
        for name in ("target_family", "families", "other_families", "useful_families"):
            value = getattr(self, name)
            names = [value] if name == "target_family" else value
            if not names:
                raise ConfigError(name, f"must be a non-empty list of task families (got {value!r})")
            unknown = next((f for f in names if f not in FAMILIES), None)
            if unknown is not None:
                raise ConfigError(name, f"has unknown task family {unknown!r} (choose from: {', '.join(FAMILIES)})")
            if len(set(names)) != len(names):
                raise ConfigError(name, f"names a task family twice (got {list(names)})")
        if self.target_family in self.other_families:
            raise ConfigError("other_families", f"must not include the target_family '{self.target_family}' "
                                                f"(got {list(self.other_families)})")

    def _validate_verifier_knobs(self) -> None:
        """Ranges of the verifier's bounds (their types are checked with every field's, in `validate`)."""
        if not self.verifier_timeout > 0:
            raise ConfigError("verifier_timeout", f"must be > 0 seconds (got {self.verifier_timeout!r})")
        if self.verifier_max_chars < 1:
            raise ConfigError("verifier_max_chars", f"must be an integer >= 1 (got {self.verifier_max_chars!r})")

    def projection_for(self, method_default: str) -> str:
        """The projection to use: the configured one, or the method's own default when it is 'auto'."""
        return method_default if self.projection == "auto" else self.projection

    @property
    def keep(self) -> int:
        """Problems selected per round: floor(M / q)."""
        return max(1, self.chunk_size // self.selection_ratio)

    def to_dict(self) -> dict:
        """Flat, as a YAML file gives it: our fields, then TRL's by their names (a saved config loads back)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "trl"}
        return {**values, **self.trl}

    def save(self, path: str | Path) -> None:
        from .fileio import write_text
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of a field: `rollout_batch` -> `--rollout-batch`."""
        return "--" + name.replace("_", "-")

    @classmethod
    def fields_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def from_sources(cls, yaml_path: str | None = None, overrides: dict | None = None) -> "RunConfig":
        """Defaults < YAML file < command-line overrides. Unknown keys are an error naming the key and file."""
        values = cls.yaml_values(yaml_path) if yaml_path else {}
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        try:
            return cls.of(**{**values, **given})
        except ConfigError as e:  # say where the bad value came from: the flag, or the YAML file
            if e.key in given:
                raise e.at(cls.flag(e.key)) from None
            if e.key in values:
                raise e.at(str(yaml_path)) from None
            raise

    def first_difference(self, other: "RunConfig") -> str | None:
        """The first key (in field order) where two configs of one run directory differ, or None. `output_dir` is
        not compared (both configs are of the directory they were found in, whatever its spelling); the other
        paths compare equal when they name the same existing file or directory."""
        mine, theirs = self.to_dict(), other.to_dict()
        for name in dict.fromkeys([*mine, *theirs]):
            a, b = mine.get(name), theirs.get(name)
            if name == "output_dir" or a == b or (name in PATH_FIELDS and _same_path(a, b)):
                continue
            return name
        return None

    @classmethod
    def yaml_values(cls, yaml_path: str) -> dict[str, Any]:
        """Just the keys a YAML file sets (each a known field); one-line errors naming the file."""
        path = Path(yaml_path)
        if not path.exists():
            raise ValueError(f"{yaml_path}: config file not found")
        if path.is_dir():
            raise ValueError(f"{yaml_path}: is a directory, not a YAML config file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{yaml_path}: cannot read it ({(e.strerror or str(e)).lower()})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise ValueError(f"{yaml_path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ValueError(f"{yaml_path}: {where}malformed YAML ({str(e).splitlines()[0]})") from None
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of config keys")
        set_environment(loaded.pop("env", {}), yaml_path)
        kinds = _field_kinds()
        values = {}
        for key, value in loaded.items():
            ours = key in kinds and key != "trl"
            if not ours and key not in trl_fields():
                if key in RENAMED:
                    raise ValueError(f"{yaml_path}: '{key}' {unknown_key_detail(key)}")
                raise ValueError(f"{yaml_path}: unknown config key '{key}' ({UNKNOWN})")
            floats = kinds[key][0] is float if ours else float in _arms(trl_fields()[key].hint)
            if floats and isinstance(value, str) and _YAML_EXPONENT.fullmatch(value.strip()):
                value = float(value)
            try:
                cls.check_type(key, value) if ours else check_trl_type(key, value)
            except ConfigError as e:
                raise e.at(str(yaml_path)) from None
            values[key] = value
        return values


PATH_FIELDS = ("pool", "validation", "test", "offline_rollouts", "offline_validation", "model")


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md's generated part): one table per section of `RunConfig`,
    as its `# ── section ──` comments group the fields; each field's name, default and help. A test compares the
    page with this, so the page cannot drift from the dataclass (`python docs/generate_configuration.py` rewrites it)."""
    import inspect
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in inspect.getsource(RunConfig).splitlines():
        heading = re.match(r"\s*# ── (.+?) ─", line)
        name = re.match(r"    (\w+): .+ = _f\(", line)
        if heading:
            sections.append((heading.group(1), []))
        elif name:
            sections[-1][1].append(name.group(1))
    defaults = {name: default for name, (_, default) in _field_kinds().items()}
    helps = RunConfig.fields_help()
    listed = [name for _, names in sections for name in names]
    assert sorted(listed) == sorted(defaults), "every RunConfig field is declared on one line with _f(...)"
    blocks = []
    for title, names in sections:
        if not names:
            continue
        rows = [f"| `{name}` | `{defaults[name]}` | {_markdown_cell(helps[name])} |" for name in names]
        blocks.append("\n".join([f"### {title}" if title else "### (ungrouped)", "",
                                 "| field | default | meaning |", "|---|---|---|", *rows]))
    return "\n\n".join(blocks) + "\n"


def _markdown_cell(text: str) -> str:
    """Help text as one table cell: a `|` would end the cell and a bare `*` could start emphasis."""
    return text.replace("|", "\\|").replace("*", "\\*")


def _same_path(a, b) -> bool:
    if not (isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists()):
        return False
    return Path(a).resolve() == Path(b).resolve()


@functools.cache
def _field_kinds() -> dict[str, tuple[Any, Any]]:
    """Each RunConfig field's declared type (evaluated) and default."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: (hints[f.name], f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(RunConfig)}


def build_grpo_config(values: dict[str, Any]):
    """TRL's GRPOConfig from `values`, quiet about the renamed gradient_checkpointing TRL's own default sets."""
    from trl import GRPOConfig
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return GRPOConfig(**values)


def _reason(error: Exception) -> str:
    return " ".join(str(error).split())[:400] or type(error).__name__


def set_environment(env: Any, yaml_path: str) -> None:
    """A YAML's `env:` mapping into the environment, as TrlParser does (e.g. WANDB_PROJECT)."""
    if not isinstance(env, dict):
        raise ValueError(f"{yaml_path}: 'env' must be a mapping of environment variables (got {env!r})")
    for key, value in env.items():
        os.environ[str(key)] = str(value)


UNKNOWN = "neither a RunConfig field nor a field of TRL's GRPOConfig, ModelConfig or script arguments"


def unknown_key_detail(key: str) -> str:
    if key in RENAMED:
        return f"is now TRL's '{RENAMED[key]}'"
    return f"is an unknown config key ({UNKNOWN})"


# ── TRL's fields ───────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class TrlField:
    owner: type  # GRPOConfig, ModelConfig or GRPOScriptArguments
    hint: Any  # the declared type
    default: Any
    help: str


@functools.cache
def trl_fields() -> dict[str, TrlField]:
    """Every field of `trl grpo`'s dataclasses (GRPOConfig, ModelConfig, GRPOScriptArguments) but the two the run
    shares with TRL (output_dir, seed: RunConfig's), by name."""
    from trl import GRPOConfig, ModelConfig
    from trl.scripts.grpo import GRPOScriptArguments
    out: dict[str, TrlField] = {}
    for owner in (GRPOScriptArguments, GRPOConfig, ModelConfig):
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            if f.init and f.name not in SHARED:
                default = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                out[f.name] = TrlField(owner, hints.get(f.name, Any), default, f.metadata.get("help", ""))
    return out


def _arms(hint) -> tuple:
    """The alternatives of a type hint (`float | None` -> (float, NoneType)); a plain type is its own one arm."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(hint, value) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if hint is type(None):
        return value is None
    if len(_arms(hint)) > 1:
        return any(_matches(arm, value) for arm in _arms(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    if hint is list or origin is list:
        element = (typing.get_args(hint) or (Any,))[0]
        return isinstance(value, (list, tuple)) and all(_matches(element, x) for x in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True  # anything else: TRL's own checks decide


def _describe(hint) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "a mapping",
             type(None): "null"}
    parts = []
    for arm in _arms(hint):
        if typing.get_origin(arm) is list or arm is list:
            parts.append("a list")
        elif isinstance(arm, type) and issubclass(arm, enum.Enum):
            parts.append("one of " + ", ".join(str(m.value) for m in arm))
        else:
            parts.append(names.get(arm, getattr(arm, "__name__", str(arm))))
    return " or ".join(dict.fromkeys(parts))


def check_trl_type(name: str, value: Any) -> None:
    """`value` fits the declared type of TRL's field `name` (an unknown name is an error too)."""
    if name not in trl_fields():
        raise ConfigError(name, unknown_key_detail(name))
    hint = trl_fields()[name].hint
    if not _matches(hint, value):
        raise ConfigError(name, f"must be {_describe(hint)} (got {value!r})")
