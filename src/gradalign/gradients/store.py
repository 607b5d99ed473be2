"""A resumable on-disk store of projected gradient features (TRAK-style verbs: create / open / append / load).

One store is a directory the caller chooses (inside the run directory, e.g. `run/features/round-3-train/`):

    features.npy   float32 [capacity, dim], memory-mapped (`numpy.lib.format.open_memmap`)
    meta.json      what the rows are: model (name / hash), round / step, projection kind, seed, dim, ...,
                   `ids` (problem ids in row order), `count` (= len(ids)), dtype

Crash safety: `append` writes and flushes the rows first and only then rewrites `meta.json` atomically
(`fileio.write_json`). Rows beyond `count` are never trusted: after a kill between the two steps the
rows are on disk but not counted, `done_ids()` does not list them, and the next `append` overwrites them.
A full store grows (a larger file is written beside it and renamed over it) unless `grow=False`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from ..fileio import atomic_path, check_new_meta, jsonable, read_meta, write_json

FEATURES, META = "features.npy", "meta.json"
DTYPE = "float32"
REQUIRED = ("model", "kind", "seed", "dim")  # what every store must say about its rows
RESERVED = ("ids", "count", "dtype", "store_format")  # maintained by the store itself


def model_hash(model) -> str:
    """sha256 (16 hex) of the trainable parameters' names, shapes and values: changes with every update."""
    import torch
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureStore:
    """Rows of projected features with their problem ids; see the module docstring."""

    def __init__(self, path: Path, meta: dict, grow: bool = True):
        self.path, self.meta, self.grow = Path(path), meta, grow
        self._array = open_memmap(self.path / FEATURES, mode="r+")

    # -- verbs ---------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path, meta: dict, capacity: int, grow: bool = True) -> "FeatureStore":
        """A new, empty store in directory `path` (which must not already hold one)."""
        path = Path(path)
        check_new_meta(path / META, meta, REQUIRED, RESERVED, "feature store")
        if int(meta["dim"]) < 1 or int(capacity) < 0:
            raise ValueError(f"{path / META}: dim must be >= 1 and capacity >= 0")
        path.mkdir(parents=True, exist_ok=True)
        dim = int(meta["dim"])
        with atomic_path(path / FEATURES) as tmp:
            arr = open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(max(int(capacity), 1), dim))
            arr.flush()
            del arr
        full = {**jsonable(meta), "dtype": DTYPE, "store_format": 1, "count": 0, "ids": []}
        write_json(path / META, full)
        return cls(path, full, grow)

    @classmethod
    def open(cls, path, expect: dict | None = None, grow: bool = True) -> "FeatureStore":
        """An existing store; ValueError (one line, naming the file and key) if its metadata differs from `expect`."""
        path = Path(path)
        meta_file = path / META
        meta = read_meta(meta_file, expect, "feature store")
        if meta.get("dtype") != DTYPE:
            raise ValueError(f"{meta_file}: metadata 'dtype' is {meta.get('dtype')!r}, expected '{DTYPE}'")
        store = cls(path, meta, grow)
        arr = store._array
        if arr.dtype != np.dtype(DTYPE) or arr.ndim != 2 or arr.shape[1] != int(meta["dim"]):
            raise ValueError(f"{path / FEATURES}: holds {arr.dtype} {arr.shape}, metadata says "
                             f"{DTYPE} [*, {meta['dim']}]")
        if meta["count"] != len(meta["ids"]) or meta["count"] > arr.shape[0]:
            raise ValueError(f"{meta_file}: 'count' {meta['count']} disagrees with {len(meta['ids'])} ids / "
                             f"{arr.shape[0]} rows on disk")
        return store

    @classmethod
    def open_or_create(cls, path, meta: dict, capacity: int, grow: bool = True) -> "FeatureStore":
        """Resume: open the store at `path` expecting `meta`, or create it."""
        if (Path(path) / META).exists():
            return cls.open(path, expect=meta, grow=grow)
        return cls.create(path, meta, capacity, grow)

    def append(self, ids: list[str], features) -> None:
        """Add rows (features [len(ids), dim]); rows are on disk before the metadata counts them."""
        ids = [str(i) for i in ids]
        feats = features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
        if feats.ndim != 2 or feats.shape != (len(ids), self.dim):
            raise ValueError(f"{self.path / FEATURES}: append needs [{len(ids)}, {self.dim}] features, got "
                             f"{list(feats.shape)}")
        seen = set(self.meta["ids"])
        dup = next((i for i in ids if i in seen), None)
        if dup is None and len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
        if dup is not None:
            raise ValueError(f"{self.path / META}: problem '{dup}' already has features in this store")
        count, n = self.count, len(ids)
        if count + n > self.capacity:
            if not self.grow:
                raise ValueError(f"{self.path / FEATURES}: store is full ({self.capacity} rows, {count} used); "
                                 f"cannot add {n} (create it with a larger capacity or grow=True)")
            self._grow(max(2 * self.capacity, count + n))
        self._array[count:count + n] = feats.astype(DTYPE, copy=False)
        self._array.flush()
        # Only now count them: a kill before this line leaves rows on disk that no one trusts.
        write_json(self.path / META, {**self.meta, "count": count + n, "ids": self.meta["ids"] + ids})
        self.meta = {**self.meta, "count": count + n, "ids": self.meta["ids"] + ids}

    def done_ids(self) -> set[str]:
        """Problems whose features are stored (and counted)."""
        return set(self.meta["ids"])

    def load(self) -> tuple[list[str], np.ndarray]:
        """(ids in row order, a read-only memory-mapped [count, dim] float32 view)."""
        arr = open_memmap(self.path / FEATURES, mode="r")
        return list(self.meta["ids"]), arr[:self.count]

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def capacity(self) -> int:
        return int(self._array.shape[0])

    def _grow(self, capacity: int) -> None:
        """Copy the counted rows into a larger file and rename it over the old one (atomic)."""
        with atomic_path(self.path / FEATURES) as tmp:
            bigger = open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(capacity, self.dim))
            bigger[:self.count] = self._array[:self.count]
            bigger.flush()
            del bigger
        self._array = open_memmap(self.path / FEATURES, mode="r+")  # the renamed, larger file

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, {self.count}/{self.capacity} rows, dim {self.dim})"


__all__ = ["FeatureStore", "model_hash"]
