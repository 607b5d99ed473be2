"""Markdown pieces shared by `summary.md` and a benchmark's `report.md`: pipe tables and relative links."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Sequence


def pipe_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Collection[int] = (0,)) -> str:
    """A GitHub pipe table; the columns numbered in `left` (names, lists) align left, the rest (numbers) right."""
    align = ["---" if i in left else "---:" for i in range(len(header))]
    return "\n".join([_table_row(header), "|" + "|".join(align) + "|", *(_table_row(cells) for cells in rows)])


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def relative_link(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """`path` as a link from a Markdown file in `base`: relative, with forward slashes on every platform."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
