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
from ..config import RunConfig
from ..data.io import save_problems
from ..data.problem import Problem
from ..data.regimes import Scenario
from ..evaluation import evaluate
from ..policy.load import save_policy
from ..selection import get_method
from ..selection.diagnostics import scores_table, selection_diagnostics, write_scores
from . import records
from .batch import BatchRound
from .ledger import Ledger, trained
from .loggers import RunLoggers
from .offline import offline_influence
from .round import DirectionOnDemand, EmptySelectionError, RoundSelection, RoundSelector, seconds_since
from .setup import (INITIAL_EVAL, check_inputs, chunk_order, join_processes, load_problem_sets, load_run_policy,
                    make_reward, round_seed)
from .trl_bridge import (Replay, new_optimizer, reusable, round_trainer, sampling_through, train_on,
                         warn_unused_trl_fields)

log = logging.getLogger(__name__)
CHECKPOINT_TMP = re.compile(r"\.round-\d{3,}-[a-z0-9_]{8}")  # save_checkpoint's mkdtemp names


@dataclass
class RunResult:
    output_dir: Path
    initial: dict
    rounds: list[dict]

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1]["test"]["accuracy"] if self.rounds else self.initial["accuracy"]


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
        self.batch = BatchRound(cfg, self.selector, self.sets.pool) if BatchRound.applies(cfg, self.selector) else None
        if self.batch and self.group.sharded:
            raise ValueError("config: 'schedule' batch runs in one process (select inside each generation batch of one "
                             "trainer); use schedule rounds with torchrun")
        self.offline = None  # CROPI: the offline stores (`prepare_offline`), made once the policy is loaded
        self.offline_seconds = 0.0
        self.offline_ledger = Ledger()
        self.lock = fileio.RunLock(self.out)  # rank 0 holds it while run() works in the directory

    # ── run directory ────────────────────────────────────────────────────────────────────────────────────
    def checkpoint_dir(self, r: int) -> Path:
        return self.out / "checkpoints" / f"round-{r:03d}"

    def finished_rounds(self) -> list[dict]:
        done = []
        for r in range(self.cfg.rounds):
            path = self.checkpoint_dir(r) / "record.json"
            if not path.exists():
                break
            done.append(fileio.read_json(path))
        return done

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
        model, tokenizer = load_run_policy(self.cfg, self.sets, self.group)
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
                log.info("round %d/%d: done in %.1f s", r + 1, self.cfg.rounds, done[-1]["timings"]["total"])
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
        self.offline = offline
        seconds = round(time.perf_counter() - t, 4)
        if behaviour:  # what the behaviour policy sampled, booked in round 0's ledger
            for store in (offline.pool, offline.validation_store):
                self.offline_ledger.generate("offline", *store.generated())
        self.offline_seconds = seconds if behaviour else 0.0  # reported in round 0's timings
        info_path = self.out / "offline.json"
        if self.group.is_main and (behaviour or not info_path.exists()):
            fileio.write_json(info_path, {"rollouts_seconds": seconds, "pool_problems": len(offline.pool),
                                          "validation_problems": len(offline.validation_store),
                                          "pool_store": str(offline.pool.path),
                                          "validation_store": str(offline.validation_store.path),
                                          "validation_sets": offline.sets})

    def run_round(self, r: int, model, tokenizer, optimizer, scheduler) -> dict:
        seed = round_seed(self.cfg.seed, r)
        start = time.perf_counter()
        ledger, timings = Ledger(), {}
        self.selector.progress = progress = f"round {r + 1}/{self.cfg.rounds}: "
        if self.batch:  # selection inside every generation batch of the round's trainer
            chunk, selection, chosen, train_log = self.batch.run(r, model, tokenizer, optimizer, scheduler, seed,
                                                                 ledger, timings)
            chunk_index = None
        else:
            chunk_index, chunk = self.round_chunk(r)
            selection, chosen, train_log = self.select_and_train(r, chunk, model, tokenizer, optimizer, scheduler,
                                                                 seed, ledger, timings)
        if self.group.is_main:
            save_problems(self.out / "selected" / f"round-{r:03d}.jsonl", chosen)
            if selection is not None:
                self.write_scores(r, chunk, selection)
        log.info("%straining: %d GRPO steps on the %d problems kept, %d completions (%d reused from selection), "
                 "%.1f s", progress, self.cfg.steps_per_round, len(chosen),
                 trained(ledger.generated, ledger.reused, "completions"), ledger.reused["completions"],
                 timings.get("training", float("nan")))
        t = time.perf_counter()
        test = self.evaluate(model, tokenizer, seed, f"round-{r:03d}")
        log.info("%sevaluation: test accuracy %.3f on %d problems, %.1f s", progress, test["accuracy"],
                 len(self.sets.test), seconds_since(t))
        record = self.round_record(r, chunk_index, chunk, selection, chosen, train_log, test)
        record["timings"].update(timings, evaluation=seconds_since(t), total=seconds_since(start))
        if r == 0 and self.offline_seconds:  # CROPI's one-time offline rollouts belong to the run's cost
            record["timings"]["offline_rollouts"] = self.offline_seconds
            record["timings"]["total"] = round(record["timings"]["total"] + self.offline_seconds, 4)
            ledger.add(self.offline_ledger)
        record["cost"] = self.group_ledger(ledger).to_dict()
        if self.batch:
            record["batch"] = self.batch.summary
        if self.group.is_main:
            self.save_checkpoint(r, model, optimizer, record)
        self.group.barrier()  # a resumed rank must find the checkpoint its rounds.jsonl promises
        return record

    def select_and_train(self, r: int, chunk: list[Problem], model, tokenizer, optimizer, scheduler, seed: int,
                         ledger: Ledger, timings: dict) -> tuple[RoundSelection | None, list[Problem], list[dict]]:
        """The published round through one trainer over the chunk, built first so that selection samples through
        it (TRL's generation and settings, vLLM included); it then trains on the selection, its first step on the
        selected problems' own selection groups (`replay`). Returns the selection, the trained problems and TRL's
        step logs; `ledger` and `timings["training"]` are filled."""
        cfg = self.cfg
        with round_trainer(model, tokenizer, chunk, cfg.steps_per_round, cfg, self.reward, optimizer, scheduler, seed,
                           ledger=ledger) as trainer:
            with sampling_through(self.selector, trainer):
                selection, picked = self.select_round(r, model, tokenizer, chunk, seed, ledger)
            trainer.replay = self.replay(selection)
            t = time.perf_counter()
            train_log = train_on(trainer, picked, cfg.steps_per_round, cfg, seed)
            timings["training"] = seconds_since(t)
        return selection, [chunk[i] for i in picked], train_log

    def round_chunk(self, r: int) -> tuple[int | None, list[Problem]]:
        """Round r's candidates (its chunk index and problems): the next chunk; `full`, unscored, the whole pool.
        They are the round trainer's dataset."""
        if not self.method.needs_rollouts:
            return None, self.sets.pool
        chunk_index = r % len(self.chunks)
        return chunk_index, [self.sets.pool[i] for i in self.chunks[chunk_index]]

    def select_round(self, r: int, model, tokenizer, chunk: list[Problem], seed: int, ledger: Ledger
                     ) -> tuple[RoundSelection | None, np.ndarray]:
        """The published round: score the chunk, keep floor(M/q) (positions in the chunk, best first); `full` keeps
        the whole pool unscored. The selection's cost goes into `ledger`, and the validation direction's seconds
        into its timings when this round measured it (`validation_every`)."""
        if not self.method.needs_rollouts:  # plain GRPO on the whole pool
            return None, np.arange(len(chunk))
        direction = DirectionOnDemand(self.selector, r, model, tokenizer, seed, ledger)
        selection = self.selector.select(model, tokenizer, chunk, seed, offline=self.offline, direction=direction)
        ledger.add(selection.ledger)
        if direction.measured is not None:
            selection.timings["validation_rollouts"] = direction.measured.seconds
        if not len(selection.selected):
            raise EmptySelectionError(f"round {r}: no candidate was eligible for selection (all {len(chunk)} "
                                      f"zero-variance?); try zero_variance: score-zero or a larger chunk_size")
        return selection, selection.selected

    def replay(self, selection: RoundSelection | None) -> Replay | None:
        """The selected problems' selection rollouts, for the round's first GRPO step (same weights, same sampler:
        the round's trainer; k_r >= num_generations, of which it takes the first num_generations), when reuse is on
        and possible."""
        g = self.cfg.grpo
        if self.group.sharded or not reusable(selection, self.cfg, g.num_generations, g.use_vllm,
                                              g.vllm_importance_sampling_correction):
            return None
        return Replay(selection.rollouts.completion_groups(selection.selected, g.num_generations))

    def group_ledger(self, ledger: Ledger) -> Ledger:
        """The round's ledger summed over processes (each counted what it generated and passed itself)."""
        if not self.group.sharded:
            return ledger
        parts = self.group.gather_to_main(ledger.to_dict())
        total = Ledger()
        for part in parts or []:
            total.add(Ledger.from_dict(part))
        return total

    def round_record(self, r: int, chunk_index, chunk: list[Problem], sel: RoundSelection | None,
                     chosen: list[Problem], train_log: list[dict], test: dict) -> dict:
        record = records.round_record(r=r, step=(r + 1) * self.cfg.steps_per_round, method=self.cfg.method,
                              processes=self.group.world_size, chunk_index=chunk_index, chunk=chunk, chosen=chosen,
                              pool=self.sets.pool, train_log=train_log, test=test)
        if sel is not None:
            records.add_selection(record, sel, selection_diagnostics(
                chunk, sel.candidates.pass_rate, sel.candidates.completion_length, sel.scores, sel.eligible,
                sel.selected, {p.source for p in self.sets.validation}))
        return record

    def write_scores(self, r: int, chunk: list[Problem], sel: RoundSelection) -> None:
        """scores/round-NNN.csv: every candidate's pass rate, score, rank, selection and labels."""
        c = sel.candidates
        write_scores(self.out / "scores" / f"round-{r:03d}.csv",
                     scores_table(chunk, c.pass_rate, c.completion_length, c.zero_variance, sel.scores, sel.ranking,
                                  sel.selected))

    def evaluate(self, model, tokenizer, seed: int, name: str) -> dict:
        """Test accuracy; a scenario's extra test sets (e.g. imbalance's other tasks, for forgetting) under "extra".
        Greedy answers go to answers/NAME.jsonl (one row per test problem, `set` naming its test set)."""
        answers: list[dict] = []

        def on(problems, test_set):
            result = evaluate(model, tokenizer, problems, self.reward, self.cfg.grpo.max_completion_length,
                              samples=self.cfg.eval_samples, sampling=self.selector.sampling, seed=seed,
                              group=self.group)
            answers.extend({"set": test_set, **row} for row in result.pop("answers", []))
            return result
        result = on(self.sets.test, "test")
        extra = self.sets.extra_tests
        if extra:
            result["extra"] = {test_set: on(problems, test_set) for test_set, problems in extra.items()}
        if answers and self.group.is_main:
            fileio.write_jsonl(self.out / "answers" / f"{name}.jsonl", answers)
        return result

    def initial_evaluation(self, model, tokenizer) -> dict:
        path = self.out / "initial.json"
        if self.group.broadcast(path.exists()):
            return fileio.read_json(path)
        result = self.evaluate(model, tokenizer, round_seed(self.cfg.seed, INITIAL_EVAL), "initial")
        if self.group.is_main:
            fileio.write_json(path, result)
        return result

    # ── state: weights + optimiser, saved per round ──────────────────────────────────────────────────────
    def load_state(self, model, n_done: int) -> None:
        """The weights of the last finished round into `model` (as loaded from the config's model), if any."""
        if n_done:
            state = load_file(str(self.checkpoint_dir(n_done - 1) / "model.safetensors"))
            missing, unexpected = model.load_state_dict(state, strict=False)
            tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
            if set(missing) - tied or unexpected:
                raise ValueError(f"{self.checkpoint_dir(n_done - 1)}: checkpoint does not match model "
                                 f"'{self.cfg.model_args.model_name_or_path}' (missing {sorted(missing)[:3]}, "
                                 f"unexpected {unexpected[:3]})")

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

    def write_logs(self, finished: list[dict]) -> None:
        records.write_round_logs(self.out, finished)
