"""CROPI's offline rollouts in one place: a resumable on-disk store (sampled once from the behaviour policy β,
reused at every stage) and what defines it (its metadata, the weights' hash, the checks made when it is reopened).
A run's two stores (pool and validation), made or opened from its config, are `curriculum.offline`'s. Verbs, as
in TRAK's feature stores: create / open / open_or_create / append / load.

One store is a directory the caller chooses (e.g. `run/rollouts/train/`):

    meta.json                 what defines the rollouts: model (name), model_hash, k, temperature, top_p,
                              max_new_tokens, seed, verifier; `logps` (which log-probs are stored) and
                              `shards` (shard names, in order)
    shard-00000.safetensors   group, prompt_ids, prompt_mask, completion_ids, completion_mask,
                              sample_logps, rewards (one `Rollouts`, as sampled)
    shard-00000.json          problem_ids, completions (decoded texts)

Crash safety: `append` writes both shard files atomically first and only then rewrites `meta.json`
(atomically) to list the shard. A kill in between leaves an unlisted shard that no one reads; the next
`append` takes the same name and overwrites it. Rewards are computed at collection time with the verifier
named in the metadata, so every stage scores the same rewards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.problem import Problem
from ..distributed import SINGLE, ProcessGroup
from ..fileio import atomic_path, jsonable, read_json, short, write_json
from ..rewards import ProblemReward
from .rollouts import Rollouts, SamplingConfig, sample_rollouts, stack_rows

log = logging.getLogger(__name__)

META = "meta.json"
REQUIRED = ("model", "model_hash", "k", "temperature", "top_p", "max_new_tokens", "seed", "verifier")
RESERVED = ("logps", "shards", "store_format")  # maintained by the store itself
LOGPS = "sampling: log-probs of the tempered, top-p-truncated distribution the tokens were drawn from"
TENSORS = ("group", "prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sample_logps", "rewards")


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """One `Rollouts` from several (e.g. shards), re-padded to the widest prompt / completion.

    Prompts are left-padded and completions right-padded; every position outside the masks holds `pad_id`
    (ids) or 0 (log-probs), so pass the id the parts were padded with (the tokenizer's) to keep them exact.
    Group indices are offset so they point at the concatenated problem list.
    """
    if not parts:
        raise ValueError("no rollouts to concatenate")
    seen: set[str] = set()
    for pid in (pid for p in parts for pid in p.problem_ids):
        if pid in seen:
            raise ValueError(f"problem '{pid}' appears in more than one rollout set")
        seen.add(pid)
    offsets = [0]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + p.num_problems)
    return stack_rows(parts, [p.group + off for p, off in zip(parts, offsets)],
                      [pid for p in parts for pid in p.problem_ids], pad_id)


# ── what defines a store: its metadata, checked when it is reopened ─────────────────────────────────────────
def model_hash(model) -> str:
    """sha256 (16 hex) of the trainable parameters' names, shapes and values: changes with every update."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def rollout_meta(model_name: str, model, k: int, sampling: SamplingConfig, seed: int, verifier: str) -> dict:
    """The metadata that defines a store's rollouts (what `open` checks on resume). With `model` None the weights'
    hash is left out: for reopening a store after the policy has moved on from the behaviour policy."""
    meta = {"model": model_name, "model_hash": model_hash(model) if model is not None else None, "k": int(k),
            "temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
            "max_new_tokens": int(sampling.max_new_tokens), "seed": int(seed), "verifier": verifier}
    return meta if model is not None else {key: v for key, v in meta.items() if key != "model_hash"}


def check_new_meta(meta_file: Path, meta: dict, required: tuple, reserved: tuple, what: str) -> None:
    """A new store's metadata names what it must and nothing the store maintains, where no store exists yet."""
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"{meta_file}: metadata needs {', '.join(missing)}")
    kept = [k for k in reserved if k in meta]
    if kept:
        raise ValueError(f"{meta_file}: '{kept[0]}' is maintained by the store; leave it out")
    if meta_file.exists():
        raise ValueError(f"{meta_file}: a {what} already exists here (open it, or use another directory)")


def read_meta(meta_file: Path, expect: dict | None, what: str) -> dict:
    """An existing store's metadata; ValueError (one line, naming the file and key) where it differs from `expect`."""
    if not meta_file.exists():
        raise ValueError(f"{meta_file}: no {what} here")
    meta = read_json(meta_file)
    for key, want in jsonable(expect or {}).items():
        if key not in meta:
            raise ValueError(f"{meta_file}: metadata has no '{key}' (expected {want!r})")
        if meta[key] != want:
            raise ValueError(f"{meta_file}: metadata '{key}' is {short(meta[key])}, expected {short(want)}")
    return meta


class RolloutStore:
    """Shards of rollouts with their problem ids; see the module docstring."""

    def __init__(self, path: Path, meta: dict, shard_ids: list[list[str]]):
        self.path, self.meta = Path(path), meta
        self._shard_ids = shard_ids  # problem ids of each listed shard, in order

    # -- verbs ---------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path, meta: dict) -> "RolloutStore":
        """A new, empty store in directory `path` (which must not already hold one)."""
        path = Path(path)
        check_new_meta(path / META, meta, REQUIRED, RESERVED, "rollout store")
        if int(meta["k"]) < 1:
            raise ValueError(f"{path / META}: k must be >= 1, got {meta['k']}")
        full = {**jsonable(meta), "logps": LOGPS, "store_format": 1, "shards": []}
        write_json(path / META, full)
        return cls(path, full, [])

    @classmethod
    def open(cls, path, expect: dict | None = None) -> "RolloutStore":
        """An existing store; ValueError (one line, naming the file and key) if its metadata differs from `expect`."""
        path = Path(path)
        meta_file = path / META
        meta = read_meta(meta_file, expect, "rollout store")
        if meta.get("logps") != LOGPS:
            raise ValueError(f"{meta_file}: metadata 'logps' is {short(meta.get('logps'))}, expected {LOGPS!r}")
        shard_ids = [cls._read_texts(path, name)["problem_ids"] for name in meta["shards"]]
        return cls(path, meta, shard_ids)

    @classmethod
    def open_or_create(cls, path, meta: dict) -> "RolloutStore":
        """Resume: open the store at `path` expecting `meta`, or create it."""
        if (Path(path) / META).exists():
            return cls.open(path, expect=meta)
        return cls.create(path, meta)

    def append(self, rollouts: Rollouts) -> None:
        """Add one shard; its files are on disk before the metadata lists it."""
        if rollouts.temperature != self.meta["temperature"]:
            raise ValueError(f"{self.path / META}: rollouts sampled at temperature {rollouts.temperature}, "
                             f"store holds temperature {self.meta['temperature']}")
        seen = self.done_ids()
        dup = next((i for i in rollouts.problem_ids if i in seen), None)
        if dup is None and len(set(rollouts.problem_ids)) != rollouts.num_problems:
            dup = next(i for i in rollouts.problem_ids if rollouts.problem_ids.count(i) > 1)
        if dup is not None:
            raise ValueError(f"{self.path / META}: problem '{dup}' already has rollouts in this store")
        name = f"shard-{len(self._shard_ids):05d}"
        with atomic_path(self.path / f"{name}.safetensors") as tmp:
            save_file({key: getattr(rollouts, key).contiguous() for key in TENSORS}, str(tmp))
        write_json(self.path / f"{name}.json",
                   {"problem_ids": list(rollouts.problem_ids), "completions": list(rollouts.completions)})
        # Only now list it: a kill before this line leaves shard files that no one reads.
        meta = {**self.meta, "shards": self.meta["shards"] + [name]}
        write_json(self.path / META, meta)
        self.meta = meta
        self._shard_ids.append(list(rollouts.problem_ids))

    def done_ids(self) -> set[str]:
        """Problems whose rollouts are stored (in listed shards)."""
        return {pid for ids in self._shard_ids for pid in ids}

    def load(self, ids: list[str] | None = None, pad_id: int = 0) -> Rollouts:
        """All rollouts in store order, or those of `ids` in that order; padding (under mask 0) is `pad_id`."""
        if not self._shard_ids:
            raise ValueError(f"{self.path / META}: the rollout store is empty")
        if ids is None:
            return concat_rollouts([self._read_shard(n) for n in self.meta["shards"]], pad_id)
        where = {pid: s for s, shard in enumerate(self._shard_ids) for pid in shard}
        unknown = next((i for i in ids if i not in where), None)
        if unknown is not None:
            raise ValueError(f"{self.path}: rollout store has no problem '{unknown}'")
        needed = sorted({where[i] for i in ids})  # read only the shards that hold the requested problems
        merged = concat_rollouts([self._read_shard(self.meta["shards"][s]) for s in needed], pad_id)
        row = {pid: r for r, pid in enumerate(merged.problem_ids)}
        return merged.select_problems([row[i] for i in ids])

    def generated(self) -> tuple[int, int]:
        """(completions, completion tokens) the store holds, read one shard at a time (the cost ledger)."""
        completions = tokens = 0
        for name in self.meta["shards"]:
            shard = self._read_shard(name)
            completions, tokens = completions + shard.group.numel(), tokens + shard.generated_tokens
        return completions, tokens

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._shard_ids)

    # -- shards --------------------------------------------------------------------------------------------

    @staticmethod
    def _read_texts(path: Path, name: str) -> dict:
        file = path / f"{name}.json"
        if not file.exists():
            raise ValueError(f"{path / META}: lists shard '{name}' but {file.name} is missing")
        return read_json(file)

    def _read_shard(self, name: str) -> Rollouts:
        texts = self._read_texts(self.path, name)
        file = self.path / f"{name}.safetensors"
        if not file.exists():
            raise ValueError(f"{self.path / META}: lists shard '{name}' but {file.name} is missing")
        tensors = load_file(str(file))
        missing = [key for key in TENSORS if key not in tensors]
        if missing:
            raise ValueError(f"{file}: shard has no tensor '{missing[0]}'")
        rows, n = tensors["group"].shape[0], len(texts["problem_ids"])
        if len(texts["completions"]) != rows or (rows and int(tensors["group"].max()) >= n):
            raise ValueError(f"{file}: {rows} rows disagree with {len(texts['completions'])} completions / "
                             f"{n} problems in {name}.json")
        return Rollouts(problem_ids=texts["problem_ids"], completions=texts["completions"],
                        temperature=float(self.meta["temperature"]), **{key: tensors[key] for key in TENSORS})

    def __repr__(self) -> str:
        return f"RolloutStore({str(self.path)!r}, {len(self)} problems in {len(self._shard_ids)} shards)"


def shard_seed(seed: int, first_id: str) -> int:
    """The sampling seed of a shard: a fixed function of the run seed and the shard's first problem id."""
    digest = hashlib.blake2b(json.dumps([int(seed), first_id]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**32


def check_sampling(store: RolloutStore, model, sampling: SamplingConfig, seed: int) -> None:
    """The model and sampling settings must be those the store was created for (else resuming mixes policies)."""
    given = {"temperature": float(sampling.temperature), "top_p": float(sampling.top_p),
             "max_new_tokens": int(sampling.max_new_tokens), "seed": int(seed), "model_hash": model_hash(model)}
    for key, value in given.items():
        if store.meta[key] != value:
            raise ValueError(f"{store.path / META}: metadata '{key}' is {short(store.meta[key])}, "
                             f"but the collection uses {short(value)}")


def collect_rollouts(store: RolloutStore, model, tokenizer, problems: list[Problem], reward: ProblemReward,
                     sampling: SamplingConfig, seed: int, shard_size: int = 256,
                     desc: str = "offline rollouts", group: ProcessGroup = SINGLE) -> RolloutStore:
    """Sample `store.meta["k"]` rewarded completions for every problem not yet in the store, one shard at a time.

    Each shard's seed depends only on (seed, its first problem id), so a run killed and restarted on the same
    problem list resamples the same shards and ends with the same rollouts as an uninterrupted one. With several
    processes (`group`, every rank holding the same store) rank r samples shards r, r+N, ...; rank 0 appends
    them in order, so the store is the one a single process writes; every rank returns it reopened.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    check_sampling(store, model, sampling, seed)
    done = store.done_ids()
    todo = [p for p in problems if p.id not in done]
    shards = [todo[start:start + shard_size] for start in range(0, len(todo), shard_size)]
    log.info("%s: %d of %d problems stored, %d to sample in %d shards", desc, len(problems) - len(todo),
             len(problems), len(todo), len(shards))
    for wave in range(0, len(shards), group.world_size):  # one shard per rank at a time
        mine = wave + group.rank
        rollouts = (sample_rollouts(model, tokenizer, shards[mine], int(store.meta["k"]), reward, sampling,
                                    seed=shard_seed(seed, shards[mine][0].id), desc=desc)
                    if mine < len(shards) else None)
        for i, part in enumerate(group.gather_to_main(rollouts) or []):
            if part is None:
                continue
            store.append(part)
            log.info("%s: shard %d/%d (%d problems, mean pass rate %.3f), %d problems stored", desc, wave + i + 1,
                     len(shards), part.num_problems, float(part.pass_rates().mean()), len(store))
    group.barrier()
    if group.is_main:
        return store
    return RolloutStore.open(store.path, expect={k: v for k, v in store.meta.items() if k not in RESERVED})


__all__ = ["RolloutStore", "collect_rollouts", "concat_rollouts", "model_hash", "rollout_meta", "shard_seed"]
