"""Atomic file writes: a killed run never leaves a half-written file that looks complete."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


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


# ── JSON values ─────────────────────────────────────────────────────────────────────────────────────────────
def jsonable(value):
    """The value as it reads back from JSON (tuples become lists, numpy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ── run directories: one process at a time, and no leftovers of killed writes ───────────────────────────────
LOCK_NAME = ".lock"
# atomic_path's temporary names: mkstemp's `.NAME.` + 8 random characters + `.tmp`
TEMPORARY_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_HELD: set[str] = set()  # the lock files this process holds


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks after boot, from /proc): tells a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = _start_time(pid)
    return not (started and now and now != started)  # the same pid, a later process: the lock's one has gone


def _cannot_write(directory: Path, e: OSError) -> ValueError:
    reason = (e.strerror or str(e)).lower()
    if e.errno == errno.ENOTDIR:  # a parent is a file
        parent = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
        reason = f"{parent} is a file, not a directory" if parent else reason
    return ValueError(f"{directory}: cannot write here ({reason})")


class RunLock:
    """`DIRECTORY/.lock`, holding "pid host start-time": one gradalign process per run directory.

    Created atomically (O_EXCL); a second process is refused with one line naming the holder's pid. A lock whose
    process has gone (killed: its pid no longer runs, or runs a later process) is taken over with a warning.
    `release` removes it only while it is still this process's own."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.token: str | None = None

    def acquire(self) -> None:
        d = self.directory
        if d.exists() and not d.is_dir():
            raise ValueError(f"{d}: exists and is not a directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
            for _ in range(5):
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    self._take_over_if_stale()
                    continue
                token = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid()) or '-'}\n"
                with os.fdopen(fd, "w") as f:
                    f.write(token)
                self.token = token
                _HELD.add(str(self.path.resolve()))
                return
        except OSError as e:
            raise _cannot_write(d, e) from None
        raise ValueError(f"{d}: another gradalign process keeps taking {self.path}; try again")

    def _take_over_if_stale(self) -> None:
        d = self.directory
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            return
        parts = text.split()
        if len(parts) < 2 or not parts[0].isdigit():
            if age < 5:  # a process between creating the lock and writing its pid
                raise ValueError(f"{d}: another gradalign process is starting in this directory")
            parts = ["0", socket.gethostname()]  # unreadable and old: nobody's
        pid, host, started = int(parts[0]), parts[1], (parts[2] if len(parts) > 2 and parts[2] != "-" else None)
        if host != socket.gethostname():
            raise ValueError(f"{d}: another gradalign process (pid {pid} on host {host}) may be running in this "
                             f"directory; if none is, delete {self.path}")
        mine = pid == os.getpid()
        if mine and str(self.path.resolve()) in _HELD:
            raise ValueError(f"{d}: this process (pid {pid}) is already running in this directory")
        if not mine and pid > 0 and _alive(pid, started):
            raise ValueError(f"{d}: another gradalign process (pid {pid}) is running in this directory")
        log.warning("%s: taking over the lock of gradalign process %d, which is no longer running", d, pid)
        try:
            if self.path.read_text() == text:  # still the stale one
                self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.token is None:
            return
        try:
            if self.path.read_text() == self.token:
                self.path.unlink()
        except FileNotFoundError:
            pass
        _HELD.discard(str(self.path.resolve()))
        self.token = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def remove_temporary_files(directory: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete what killed `atomic_path` writes left under `directory` (`.NAME.XXXXXXXX.tmp`); hold its lock."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    walk = os.walk(directory) if recursive else [(str(directory), [], os.listdir(directory))]
    removed = []
    for root, _, names in walk:
        for name in names:
            path = Path(root, name)
            if TEMPORARY_FILE.fullmatch(name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
