"""Atomic file writes: a killed run never leaves a half-written file that looks complete."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


# ── store metadata (feature stores, rollout stores): one `meta.json` beside the data ─────────────────────────
def jsonable(value):
    """The value as it reads back from JSON (tuples become lists, numpy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
