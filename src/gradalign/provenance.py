"""Which code produced a record: a fingerprint of gradalign's source files.

A benchmark runs for hours, cell by cell, often from a copy of the source taken when it started; a table that
mixes cells of two versions compares the versions as much as the methods. Every round record and every
benchmark JSON carries the fingerprint of the source that ran, and a benchmark report says when its cells ran
more than one.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).parent
FINGERPRINT_DIGITS = 12  # of SHA-256: enough to tell versions apart, short enough to read in a table


def source_fingerprint(root: str | Path = PACKAGE) -> str:
    """Hex digest over every `.py` file under `root`, each as its relative path and its bytes, in path order
    (compiled caches and data files do not count: they do not change what runs)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        content = path.read_bytes()
        for part in (path.relative_to(root).as_posix().encode(), content):
            digest.update(len(part).to_bytes(8, "big") + part)  # length-prefixed: where a file ends is hashed too
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


@functools.lru_cache(maxsize=1)
def running_code() -> str:
    """The fingerprint of the gradalign source this process runs (computed once)."""
    return source_fingerprint(PACKAGE)
