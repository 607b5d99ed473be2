"""The adaptive curriculum (METHODS.md §1): per round, score the next chunk with the current policy, keep the
top fraction, train T GRPO steps on it; the optimiser state carries across rounds.

Resumable: each finished round leaves an atomically written checkpoint (weights, optimiser state, the round's
record). A rerun of the same command loads the latest one and continues with the next round; every round is
seeded by (seed, round), so the result equals an uninterrupted run.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .. import fileio
from ..config import SCENARIO_KNOBS, RunConfig
from ..data.io import InputColumns, load_problems, save_problems
from ..data.problem import DataError, Problem
from ..data.regimes import Scenario, build_scenario
from ..distributed import ProcessGroup, block_count, fsdp_requested, launched_world_size, process_group
from ..evaluation import evaluate
from ..policy.load import apply_peft, load_policy, resolve_device, save_policy
from ..reports.loggers import RunLoggers
from ..rewards import ProblemReward, get_verifier
from ..selection import get_method
from ..selection.diagnostics import scores_table, selection_diagnostics, write_scores
from .offline import offline_influence
from .round import EmptySelectionError, RoundSelection, RoundSelector
from .trl_bridge import grpo_steps, new_optimizer, warn_unused_trl_fields

log = logging.getLogger(__name__)
INITIAL_EVAL = 2**31 - 1  # the "round" whose seed the evaluation before training uses
CHECKPOINT_TMP = re.compile(r"\.round-\d{3,}-[a-z0-9_]{8}")  # save_checkpoint's mkdtemp names


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
        kw.update({param: getattr(cfg, name) for param, name in SCENARIO_KNOBS.get(cfg.scenario, {}).items()})
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
    return cfg.model_args.model_name_or_path == "tiny" or Path(cfg.model_args.model_name_or_path, "gradalign_tiny").exists()


def _named_sets(cfg: RunConfig, sets: Scenario) -> list[tuple[str, list[Problem]]]:
    """(how to name it in a message, problems) for every problem set of a run."""
    def name(path, kind):
        return path or f"the built-in '{cfg.scenario}' {kind} set"
    return [(name(cfg.pool, "pool"), sets.pool), (name(cfg.validation, "validation"), sets.validation),
            (name(cfg.test, "test"), sets.test), *((name(None, f"test-{k}"), ps) for k, ps in sets.extra_tests.items())]


def _check_verifiable(cfg: RunConfig, sets: Scenario) -> None:
    """Every problem must be scorable by the verifier it gets: a known per-problem verifier (`task`), and a
    countdown puzzle (numbers and target, or a gold expression) wherever countdown scores it."""
    if cfg.verifier not in ("countdown", "task"):  # exact and math score any answer text
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


def warn_long_prompts(cfg: RunConfig, sets: Scenario, model, tokenizer) -> None:
    """One warning line per problem set (with a count) whose prompts plus `max_new_tokens` do not fit the model's
    context, once the model and tokenizer are loaded (the tiny policy is checked by characters in check_inputs)."""
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
    if (cfg.problems_per_step * cfg.grpo.num_generations) % world:
        raise ValueError(f"config: problems_per_step × num_generations = {cfg.problems_per_step * cfg.grpo.num_generations}"
                         f" completions per GRPO step cannot be split evenly over {world} processes")
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
                         "a model FSDP shards, use GradAlignGRPOTrainer in a TRL script (README: FSDP)")
    check_sharding(cfg, sets, launched_world_size())
    return process_group(resolve_device(cfg.device))


def make_reward(cfg: RunConfig) -> ProblemReward:
    """The one reward of a run: training, selection and evaluation all score with it."""
    kw = {"timeout_seconds": cfg.verifier_timeout} if cfg.verifier in ("math", "task") else {}
    return ProblemReward(get_verifier(cfg.verifier, **kw), seed=cfg.seed, max_chars=cfg.verifier_max_chars)


@dataclass
class RunResult:
    output_dir: Path
    initial: dict
    rounds: list[dict]

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1]["test"]["accuracy"] if self.rounds else self.initial["accuracy"]


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return {}
    return {"mean": float(x.mean()), "min": float(x.min()), "max": float(x.max()), "std": float(x.std())}


class Curriculum:
    """Select → train rounds over one pool. `run()` resumes from the run directory if it holds finished rounds."""

    def __init__(self, cfg: RunConfig, sets: Scenario | None = None):
        cfg.check_with_trl()  # TRL's own checks of its fields, before anything is loaded or computed
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.sets = sets or load_problem_sets(cfg)
        check_inputs(cfg, self.sets)
        self.group = join_processes(cfg, self.sets)
        self.method = get_method(cfg.method)
        self.reward = make_reward(cfg)
        self.selector = RoundSelector(cfg, self.sets.validation, self.reward, pool=self.sets.pool, group=self.group)
        self.chunks = chunk_order(len(self.sets.pool), cfg.chunk_size, cfg.seed)
        self.offline_seconds = 0.0
        self.lock = fileio.RunLock(self.out)  # rank 0 holds it while run() works in the directory

    # ── run directory ────────────────────────────────────────────────────────────────────────────────────
    def checkpoint_dir(self, r: int) -> Path:
        return self.out / "checkpoints" / f"round-{r:03d}"

    def finished_rounds(self) -> list[dict]:
        records = []
        for r in range(self.cfg.rounds):
            path = self.checkpoint_dir(r) / "record.json"
            if not path.exists():
                break
            records.append(fileio.read_json(path))
        return records

    def check_run_dir(self) -> None:
        """A run directory is bound to the config of its first file, config.yaml: any other config is refused
        (finished rounds or not), reading only. `output_dir` itself is not compared: any spelling of the path."""
        saved = self.out / "config.yaml"
        if not saved.exists():
            return
        previous = RunConfig.from_sources(str(saved))
        key = self.cfg.first_difference(previous)
        if key is not None:
            was, now = fileio.short(previous.value(key)), fileio.short(self.cfg.value(key))
            raise ValueError(f"{saved}: this run directory was started with {key} {was}; this command has {key} "
                             f"{now}; use a new output_dir (or the same config to resume)")

    def take_lock(self) -> None:
        """Rank 0 takes OUTPUT_DIR/.lock (a second process on the directory is refused); every rank learns how."""
        error = None
        if self.group.is_main:
            try:
                self.lock.acquire()
            except ValueError as e:
                error = str(e)
        error = self.group.broadcast(error)
        if error:
            raise ValueError(error)

    def remove_leftovers(self) -> None:
        """What writes killed mid-way left behind: checkpoints/.round-NNN-XXXXXXXX/ and atomic_path's temporary
        files (under the lock, before anything is written)."""
        ours = (self.out / "config.yaml").exists()  # walk only a directory this code made
        removed = fileio.remove_temporary_files(self.out, recursive=ours)
        checkpoints = self.out / "checkpoints"
        if ours and checkpoints.is_dir():
            for tmp in checkpoints.glob(".round-*"):
                if tmp.is_dir() and CHECKPOINT_TMP.fullmatch(tmp.name):
                    shutil.rmtree(tmp)
                    removed.append(tmp)
        if removed:
            log.info("%s: removed %d leftovers of interrupted writes (e.g. %s)", self.out, len(removed),
                     removed[0].relative_to(self.out))

    def prepare_run_dir(self) -> None:
        """Check the run directory against the config (every rank, again now that rank 0 holds the lock), then
        clear leftovers of killed writes and write the inputs (rank 0 only)."""
        self.check_run_dir()
        if self.group.is_main:
            self.remove_leftovers()
            self.write_inputs(self.out / "config.yaml")
        self.group.barrier()

    def write_inputs(self, saved: Path) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if not saved.exists():  # a resumed run keeps the file its directory was started with
            self.cfg.save(saved)
        extra = [(f"test-{name}", problems) for name, problems in self.sets.extra_tests.items()]
        for name, problems in [("pool", self.sets.pool), ("validation", self.sets.validation),
                               ("test", self.sets.test), *extra]:
            path = self.out / "problems" / f"{name}.jsonl"
            if problems and not path.exists():
                save_problems(path, problems)

    # ── the loop ─────────────────────────────────────────────────────────────────────────────────────────
    def run(self) -> RunResult:
        """Refuse what cannot run (a changed config, a bad model, a busy or unwritable directory) before anything
        is written; then work in the directory holding its lock, released however the run ends."""
        self.check_run_dir()
        model, tokenizer = load_policy(self.cfg.model_args.model_name_or_path, self.cfg.device, self.group)
        model = apply_peft(model, self.cfg)  # use_peft: train and score a LoRA adapter only
        warn_long_prompts(self.cfg, self.sets, model, tokenizer)
        if self.group.is_main:
            warn_unused_trl_fields(self.cfg)
        self.take_lock()
        try:
            return self._run(model, tokenizer)
        finally:
            self.lock.release()

    def _run(self, model, tokenizer) -> RunResult:
        self.prepare_run_dir()
        done = self.group.broadcast(self.finished_rounds())  # every rank resumes after the same round
        self.load_state(model, len(done))
        optimizer, scheduler = self.optimizer(model, len(done))
        initial = self.initial_evaluation(model, tokenizer)
        if "offline" in self.method.needs:
            self.prepare_offline(model, tokenizer, behaviour=not done)
        if done:
            log.info("resuming %s after round %d of %d", self.out, len(done) - 1, self.cfg.rounds)
        loggers = RunLoggers(self.cfg.value("report_to"), str(self.out), model) if self.group.is_main else None
        try:
            for r in range(len(done), self.cfg.rounds):
                if self.cfg.reset_optimizer:
                    optimizer, scheduler = new_optimizer(model, self.cfg)
                done.append(self.run_round(r, model, tokenizer, optimizer, scheduler))
                log.info("round %d/%d: test accuracy %.3f", r + 1, self.cfg.rounds, done[-1]["test"]["accuracy"])
                if loggers:
                    loggers.log_round(done[-1], steps_before=r * self.cfg.steps_per_round)
        finally:
            if loggers:
                loggers.close()
        if self.group.is_main:
            self.write_logs(done)
        return RunResult(self.out, initial, done)

    def prepare_offline(self, model, tokenizer, behaviour: bool) -> None:
        """CROPI: the offline rollout stores, sampled from `model` (= β, the policy before any training) when
        `behaviour`; a resumed run only opens them."""
        t = time.perf_counter()
        offline = offline_influence(self.cfg, model, tokenizer, self.sets.pool, self.sets.validation, self.reward,
                                    collect=behaviour, group=self.group)
        self.selector.offline = offline
        seconds = round(time.perf_counter() - t, 4)
        self.offline_seconds = seconds if behaviour else 0.0  # reported in round 0's timings
        info_path = self.out / "offline.json"
        if self.group.is_main and (behaviour or not info_path.exists()):
            fileio.write_json(info_path, {"rollouts_seconds": seconds, "pool_problems": len(offline.pool),
                                          "validation_problems": len(offline.validation_store),
                                          "pool_store": str(offline.pool.path),
                                          "validation_store": str(offline.validation_store.path),
                                          "validation_sets": offline.sets})

    def run_round(self, r: int, model, tokenizer, optimizer, scheduler) -> dict:
        cfg, seed = self.cfg, round_seed(self.cfg.seed, r)
        start = time.perf_counter()
        if self.method.needs_rollouts:
            chunk_index = r % len(self.chunks)
            chunk = [self.sets.pool[i] for i in self.chunks[chunk_index]]
            selection = self.selector.select(model, tokenizer, chunk, seed)
            chosen = [chunk[i] for i in selection.selected]
        else:  # plain GRPO on the whole pool
            chunk_index, chunk, selection, chosen = None, self.sets.pool, None, list(self.sets.pool)
        if not chosen:
            raise EmptySelectionError(f"round {r}: no candidate was eligible for selection (all {len(chunk)} "
                                      f"zero-variance?); try zero_variance: score-zero or a larger chunk_size")
        if self.group.is_main:
            save_problems(self.out / "selected" / f"round-{r:03d}.jsonl", chosen)
            if selection is not None:
                self.write_scores(r, chunk, selection)
        t = time.perf_counter()
        train_log = grpo_steps(model, tokenizer, chosen, cfg.steps_per_round, cfg, self.reward, optimizer, scheduler,
                               seed)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        test = self.evaluate(model, tokenizer, seed)
        record = self.round_record(r, chunk_index, chunk, selection, chosen, train_log, test)
        record["timings"].update(training=round(t_train, 4), evaluation=round(time.perf_counter() - t, 4),
                                 total=round(time.perf_counter() - start, 4))
        if r == 0 and self.offline_seconds:  # CROPI's one-time offline rollouts belong to the run's cost
            record["timings"]["offline_rollouts"] = self.offline_seconds
            record["timings"]["total"] = round(record["timings"]["total"] + self.offline_seconds, 4)
        if self.group.is_main:
            self.save_checkpoint(r, model, optimizer, record)
        self.group.barrier()  # a resumed rank must find the checkpoint its rounds.jsonl promises
        return record

    def round_record(self, r: int, chunk_index, chunk: list[Problem], sel: RoundSelection | None,
                     chosen: list[Problem], train_log: list[dict], test: dict) -> dict:
        sources = count_values(p.source for p in chosen)
        corrupted = [p.corrupted for p in chosen]
        record = {
            "round": r, "step": (r + 1) * self.cfg.steps_per_round, "method": self.cfg.method, "chunk": chunk_index,
            "processes": self.group.world_size,
            "candidates": len(chunk), "selected_count": len(chosen), "selected_ids": [p.id for p in chosen],
            "selected_by_source": sources,
            "selected_corrupted_share": float(np.mean(corrupted)) if any(p.corrupted for p in self.sets.pool) else None,
            "selected_by_utility": count_values(p.metadata.get("utility") for p in chosen) if any(
                "utility" in p.metadata for p in self.sets.pool) else None,
            "train": {k: float(np.mean([float(row[k]) for row in train_log if k in row]))
                      for k in ("loss", "reward", "reward_std", "frac_reward_zero_std") if train_log},
            "train_log": train_log, "test": test, "timings": {},
        }
        if sel is not None:
            cand, chosen_idx = sel.candidates, sel.selected
            record.update({
                "pass_rate": _summary(cand.pass_rate), "zero_variance": int(cand.zero_variance.sum()),
                "pass_rate_histogram": np.histogram(cand.pass_rate, bins=10, range=(0, 1))[0].tolist(),
                "selected_pass_rate": _summary(cand.pass_rate[chosen_idx]),
                "scores": {"all": _summary(sel.scores), "selected": _summary(sel.scores[chosen_idx])},
                "validation": {"zero_variance": sel.validation_zero_variance,
                               "pass_rate": sel.validation_pass_rate},
                "fallback": sel.fallback,
            })
            for key in ("warmup", "validation_sets", "offpolicy"):
                if getattr(sel, key) is not None:
                    record[key] = getattr(sel, key)
            record["timings"].update(sel.timings)
            record["diagnostics"] = selection_diagnostics(
                chunk, cand.pass_rate, cand.completion_length, sel.scores, sel.eligible, chosen_idx,
                {p.source for p in self.sets.validation})
        return record

    def write_scores(self, r: int, chunk: list[Problem], sel: RoundSelection) -> None:
        """scores/round-NNN.csv: every candidate's pass rate, score, rank, selection and labels."""
        c = sel.candidates
        write_scores(self.out / "scores" / f"round-{r:03d}.csv",
                     scores_table(chunk, c.pass_rate, c.completion_length, c.zero_variance, sel.scores, sel.ranking,
                                  sel.selected))

    def evaluate(self, model, tokenizer, seed: int) -> dict:
        """Test accuracy; a scenario's extra test sets (e.g. imbalance's other tasks, for forgetting) under "extra"."""
        def on(problems):
            return evaluate(model, tokenizer, problems, self.reward, self.cfg.grpo.max_completion_length,
                            samples=self.cfg.eval_samples, sampling=self.selector.sampling, seed=seed,
                            group=self.group)
        result = on(self.sets.test)
        extra = self.sets.extra_tests
        if extra:
            result["extra"] = {name: on(problems) for name, problems in extra.items()}
        return result

    def initial_evaluation(self, model, tokenizer) -> dict:
        path = self.out / "initial.json"
        if self.group.broadcast(path.exists()):
            return fileio.read_json(path)
        result = self.evaluate(model, tokenizer, round_seed(self.cfg.seed, INITIAL_EVAL))
        if self.group.is_main:
            fileio.write_json(path, result)
        return result

    # ── state: weights + optimiser, saved per round ──────────────────────────────────────────────────────
    def load_state(self, model, n_done: int) -> None:
        """The weights of the last finished round into `model` (as loaded from cfg.model_args.model_name_or_path), if any."""
        if n_done:
            state = load_file(str(self.checkpoint_dir(n_done - 1) / "model.safetensors"))
            missing, unexpected = model.load_state_dict(state, strict=False)
            tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
            if set(missing) - tied or unexpected:
                raise ValueError(f"{self.checkpoint_dir(n_done - 1)}: checkpoint does not match model "
                                 f"'{self.cfg.model_args.model_name_or_path}' (missing {sorted(missing)[:3]}, unexpected {unexpected[:3]})")

    def optimizer(self, model, n_done: int):
        optimizer, scheduler = new_optimizer(model, self.cfg)
        if n_done:
            path = self.checkpoint_dir(n_done - 1) / "optimizer.pt"
            optimizer.load_state_dict(torch.load(path, weights_only=True))
        return optimizer, scheduler

    def save_checkpoint(self, r: int, model, optimizer, record: dict) -> None:
        """Write the round's checkpoint into a temporary directory and rename it: all or nothing."""
        target = self.checkpoint_dir(r)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        save_policy(model, tmp, tiny=self.cfg.model_args.model_name_or_path == "tiny")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        fileio.write_json(tmp / "record.json", record)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        if r > 0:  # only the latest weights are kept; earlier rounds keep their record
            for name in ("model.safetensors", "adapter_model.safetensors", "optimizer.pt"):
                (self.checkpoint_dir(r - 1) / name).unlink(missing_ok=True)
        self.write_logs(self.finished_rounds())

    def write_logs(self, records: list[dict]) -> None:
        """rounds.jsonl (one line per round, without the per-step log) and metrics.jsonl (per step and round)."""
        fileio.write_jsonl(self.out / "rounds.jsonl", [{k: v for k, v in rec.items() if k != "train_log"}
                                                        for rec in records])
        metrics = []
        steps_before = 0
        for rec in records:
            for i, row in enumerate(rec.get("train_log", [])):
                # our step after TRL's row: TRL's own "step" restarts with every round's trainer
                metrics.append({"round": rec["round"], **{k: float(v) for k, v in row.items() if _is_number(v)},
                                "step": steps_before + i + 1})
            steps_before = rec["step"]
            metrics.append({"round": rec["round"], "step": rec["step"], "test_accuracy": rec["test"]["accuracy"]})
        fileio.write_jsonl(self.out / "metrics.jsonl", metrics)


def count_values(values) -> dict[str, int]:
    """How often each value occurs (as text), e.g. the sources of a selection."""
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
