"""Atomic writes: all or nothing, and the result is an ordinary file (not mkstemp's private 0600)."""

import os

import pytest

from gradalign.fileio import read_json, write_json, write_text


def test_atomic_write_leaves_an_ordinary_file(tmp_path):
    mask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(mask)
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_text(tmp_path / "a.txt", "old")
    from gradalign.fileio import atomic_path
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
