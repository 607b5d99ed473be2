"""What a run needs before its first round: the problems (built-in scenario, files or datasets), the checks that
refuse a run that cannot work before anything is computed, the one reward, the process group, and the seeds and
chunks every round derives from. `gradalign run`, `gradalign select`, `GradAlignGRPOTrainer` and the benchmarks
share them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import SCENARIO_KNOBS, ConfigError, RunConfig
from ..data.io import InputColumns, load_problems
from ..data.problem import DataError, Problem
from ..data.regimes import Scenario, build_scenario
from ..distributed import ProcessGroup, block_count, fsdp_requested, launched_world_size, process_group
from ..policy.load import apply_peft, load_policy, resolve_device
from ..rewards import ProblemReward, get_verifier
from ..selection import get_method

log = logging.getLogger(__name__)
INITIAL_EVAL = 2**31 - 1  # the "round" whose seed the evaluation before training uses


def round_seed(seed: int, r: int) -> int:
    """Independent, reproducible seed for round r (rollouts, tie-breaks, TRL)."""
    return int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def chunk_order(n_pool: int, chunk_size: int, seed: int) -> list[np.ndarray]:
    """Shuffle the pool once and cut it into chunks of M; the last chunk wraps around so every chunk has M."""
    order = np.random.default_rng(seed).permutation(n_pool)
    n_chunks = -(-n_pool // chunk_size)
    padded = np.concatenate([order, order[: n_chunks * chunk_size - n_pool]])
    return [padded[i * chunk_size:(i + 1) * chunk_size] for i in range(n_chunks)]


def load_problem_sets(cfg: RunConfig) -> Scenario:
    """The pool, validation and test problems: the user's files or `datasets` datasets, or a built-in scenario."""
    if cfg.pool is None:
        kw = dict(pool_size=cfg.pool_size, validation_size=cfg.validation_size, test_size=cfg.test_size, seed=cfg.seed)
        # each scenario gets exactly its own knobs (config.SCENARIO_KNOBS: builder parameter -> RunConfig field)
        # (a knob left None takes the scenario's own default)
        kw.update({param: getattr(cfg, name) for param, name in SCENARIO_KNOBS.get(cfg.scenario, {}).items()
                   if getattr(cfg, name) is not None})
        if "families" in kw:  # unreliable-rewards takes family -> weight; the config lists equal-weight families
            kw["families"] = dict.fromkeys(kw["families"], 1.0)
        return build_scenario(cfg.scenario, **kw)
    validation = load_user_set(cfg, "validation") if cfg.validation else []
    test = load_user_set(cfg, "test") if cfg.test else []
    return Scenario("custom", load_user_set(cfg, "pool"), validation, test)


def load_user_set(cfg: RunConfig, kind: str) -> list[Problem]:
    """The `kind` set ("pool", "validation" or "test") the config names: a file, or a `datasets` dataset read with
    its ``{kind}_split`` and ``{kind}_config`` (the pool's are TRL's `dataset_train_split` and `dataset_config`);
    both with the config's column mapping."""
    columns = InputColumns(prompt=cfg.prompt_column, answer=cfg.answer_column, id=cfg.id_column,
                           source=cfg.source_column)
    split, config = (("dataset_train_split", "dataset_config") if kind == "pool" else
                     (f"{kind}_split", f"{kind}_config"))
    return load_problems(getattr(cfg, kind), split=cfg.value(split), config=cfg.value(config), columns=columns)


def check_inputs(cfg: RunConfig, sets: Scenario) -> None:
    """Refuse what cannot run, before anything is computed."""
    method = get_method(cfg.method)
    if "validation" in method.needs and not sets.validation:
        raise DataError(f"method '{cfg.method}' needs a trusted validation set: set 'validation' to a file or "
                        f"dataset")
    if method.needs_rollouts and cfg.chunk_size > len(sets.pool):
        where = cfg.pool or f"the built-in '{cfg.scenario}' pool"
        raise DataError(f"{where}: chunk_size {cfg.chunk_size} is larger than the pool ({len(sets.pool)} problems); "
                        f"lower chunk_size")
    _check_verifiable(cfg, sets)
    if _tiny_policy(cfg):
        _warn_tiny_prompts(cfg, sets)


def _tiny_policy(cfg: RunConfig) -> bool:
    """The built-in tiny policy or one of its checkpoints (a character tokenizer built in code)."""
    model = cfg.model_args.model_name_or_path
    return model == "tiny" or Path(model, "gradalign_tiny").exists()


def _named_sets(cfg: RunConfig, sets: Scenario) -> list[tuple[str, list[Problem]]]:
    """(how to name it in a message, problems) for every problem set of a run."""
    def name(path, kind):
        return path or f"the built-in '{cfg.scenario}' {kind} set"
    return [(name(cfg.pool, "pool"), sets.pool), (name(cfg.validation, "validation"), sets.validation),
            (name(cfg.test, "test"), sets.test), *((name(None, f"test-{k}"), ps) for k, ps in sets.extra_tests.items())]


def _check_verifiable(cfg: RunConfig, sets: Scenario) -> None:
    """Every problem must be scorable by the verifier it gets: a known per-problem verifier (`task`), and a
    countdown puzzle (numbers and target, or a gold expression) wherever countdown scores it."""
    if cfg.verifier not in ("countdown", "task"):  # exact, math and number score any answer text
        return
    from ..rewards.expression import CountdownVerifier
    from ..rewards.verifiers import TASK_VERIFIERS
    for where, problems in _named_sets(cfg, sets):
        for p in problems:
            kind = p.metadata.get("verifier", "exact") if cfg.verifier == "task" else cfg.verifier
            if kind not in TASK_VERIFIERS and cfg.verifier == "task":
                raise DataError(f"{where}: problem '{p.id}': field 'metadata.verifier' is {kind!r} "
                                f"(choose from: {', '.join(TASK_VERIFIERS)})")
            if kind == "countdown":
                try:
                    CountdownVerifier.puzzle(p.answer, p.metadata)
                except ValueError as error:
                    raise DataError(f"{where}: problem '{p.id}': {error}") from None


def _warn_tiny_prompts(cfg: RunConfig, sets: Scenario) -> None:
    """One warning line per problem set (with a count) for prompts the tiny policy cannot read as written: longer
    than its context, or with characters outside its alphabet (they become <unk>). Nothing is loaded for this."""
    from ..policy.tiny import ALPHABET, build_tokenizer, tiny_config

    context = tiny_config(build_tokenizer()).max_position_embeddings
    alphabet = set(ALPHABET)
    for where, problems in _named_sets(cfg, sets):
        long, longest, foreign, first = 0, 0, 0, None
        for p in problems:
            text = p.prompt if isinstance(p.prompt, str) else "".join(m["content"] for m in p.prompt)
            if len(text) + 1 > context:  # one token per character, plus BOS (chat renders to the same tokens)
                long, longest = long + 1, max(longest, len(text))
            outside = next((c for c in text if c not in alphabet), None)
            if outside is not None:
                foreign += 1
                first = first or (outside, p.id)
        if long:
            log.warning("%s: %d prompts are longer than the tiny policy's %d-token context (one token per character "
                        "plus BOS; longest %d characters)", where, long, context, longest)
        if foreign:
            log.warning("%s: %d prompts contain characters outside the tiny policy's alphabet, read as <unk> "
                        "(first: %r in problem %r)", where, foreign, first[0], first[1])


def load_run_policy(cfg: RunConfig, sets: Scenario, group: ProcessGroup):
    """(model, tokenizer) of a run or a one-shot selection: the policy, wrapped in its LoRA adapter with `use_peft`
    (only the adapter trains and is scored), `score_parameters` checked against it, long prompts warned about."""
    model, tokenizer = load_policy(cfg.model_args.model_name_or_path, cfg.device, group)
    model = apply_peft(model, cfg)
    check_scope(cfg, model)
    warn_long_prompts(cfg, sets, model, tokenizer)
    return model, tokenizer


def check_scope(cfg: RunConfig, model) -> None:
    """`score_parameters` must give a scope on this model (after any LoRA wrapping): refused in one line once the
    model is loaded, before the first round rolls anything out."""
    if cfg.score_parameters:
        from ..gradients.scope import ScopeError, resolve
        try:
            resolve(model, cfg.score_parameters)
        except ScopeError as e:
            raise ConfigError("score_parameters", e.detail) from None


def warn_long_prompts(cfg: RunConfig, sets: Scenario, model, tokenizer) -> None:
    """One warning line per problem set (with a count) whose prompts plus `max_completion_length` do not fit the
    model's context, once the model and tokenizer are loaded (the tiny policy is checked by characters in
    check_inputs)."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not context or _tiny_policy(cfg):
        return
    from ..policy.rollouts import tokenize_prompts
    for where, problems in _named_sets(cfg, sets):
        lengths = [len(ids) for ids in tokenize_prompts(tokenizer, [p.prompt for p in problems])] if problems else []
        over = [n for n in lengths if n + cfg.grpo.max_completion_length > context]
        if over:
            log.warning("%s: %d prompts do not fit the model's %d-token context with max_completion_length %d (longest "
                        "%d tokens); generation will see them truncated or fail", where, len(over), context,
                        cfg.grpo.max_completion_length, max(over))


def check_sharding(cfg: RunConfig, sets: Scenario, world: int) -> None:
    """What several processes cannot share out, refused before anything is computed."""
    if world == 1:
        return
    method = get_method(cfg.method)
    if "offline" in method.needs and cfg.offpolicy_fidelity:
        raise ValueError("config: offpolicy_fidelity (CROPI's on-policy check) runs on one process only: launch it "
                         "as one process, or turn it off")
    completions = cfg.problems_per_step * cfg.grpo.num_generations
    if completions % world:
        raise ValueError(f"config: problems_per_step × num_generations = {completions} completions per GRPO step "
                         f"cannot be split evenly over {world} processes")
    check_blocks(cfg, sets, world)


def check_blocks(cfg: RunConfig, sets: Scenario, world: int) -> None:
    """Every process needs at least one block of `rollout_batch` problems of each list a round rolls out."""
    method = get_method(cfg.method)
    lists = {"chunk_size": cfg.chunk_size if method.needs_rollouts else None,
             "the validation set": len(sets.validation) if "validation" in method.needs else None}
    for name, n in lists.items():
        if n is not None and block_count(n, cfg.rollout_batch) < world:
            raise ValueError(f"{name} ({n} problems) in blocks of rollout_batch {cfg.rollout_batch} gives "
                             f"{block_count(n, cfg.rollout_batch)} blocks for {world} processes; lower rollout_batch "
                             f"to at most {max(1, n // world)}")


def join_processes(cfg: RunConfig, sets: Scenario) -> ProcessGroup:
    """This process's group for `cfg` (one process without a launcher), after checking the run can be shared."""
    if fsdp_requested():
        raise ValueError("gradalign run and select keep a whole policy on every process (data parallel); to train "
                         "a model FSDP shards, use GradAlignGRPOTrainer in a TRL script (docs/scaling.md: FSDP)")
    check_sharding(cfg, sets, launched_world_size())
    return process_group(resolve_device(cfg.device))


def make_reward(cfg: RunConfig) -> ProblemReward:
    """The one reward of a run: training, selection and evaluation all score with it."""
    kw = {"timeout_seconds": cfg.verifier_timeout} if cfg.verifier in ("math", "number", "task") else {}
    return ProblemReward(get_verifier(cfg.verifier, **kw), seed=cfg.seed, max_chars=cfg.verifier_max_chars)
