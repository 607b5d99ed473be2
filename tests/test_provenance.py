"""The source fingerprint that round records and benchmark JSONs carry: equal for equal source, different for any
change to what runs (a file's bytes, its name, a file added), blind to what does not run (caches, data files)."""

import hashlib
import shutil
from pathlib import Path

import gradalign
from gradalign.provenance import FINGERPRINT_DIGITS, running_code, source_fingerprint

PACKAGE = Path(gradalign.__file__).parent


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_fingerprint_follows_the_source_and_nothing_else(tmp_path):
    files = {"__init__.py": "x = 1\n", "sub/a.py": "def f():\n    return 2\n", "sub/b.py": ""}
    base = source_fingerprint(tree(tmp_path / "base", files))
    assert len(base) == FINGERPRINT_DIGITS and int(base, 16) >= 0
    assert source_fingerprint(tree(tmp_path / "copy", files)) == base  # where it lives does not count
    changed = [{**files, "sub/a.py": "def f():\n    return 3\n"},  # one byte
               {k.replace("sub/b.py", "sub/c.py"): v for k, v in files.items()},  # a name
               {**files, "sub/new.py": ""},  # a file added, even empty
               {k: v for k, v in files.items() if k != "sub/b.py"}]  # a file removed, even empty
    prints = [source_fingerprint(tree(tmp_path / f"v{i}", f)) for i, f in enumerate(changed)]
    assert base not in prints and len(set(prints)) == len(prints)
    # bytes moved from the end of one file to the start of the next: the same bytes in order, another source
    moved = {"__init__.py": "x = 1\n", "sub/a.py": "def f():\n    return", "sub/b.py": " 2\n"}
    assert source_fingerprint(tree(tmp_path / "moved", moved)) != base
    # compiled caches and data files do not change what runs
    tree(tmp_path / "base", {"sub/__pycache__/a.cpython-312.pyc": "junk", "data.json": "{}"})
    assert source_fingerprint(tmp_path / "base") == base


def test_running_code_is_the_installed_packages_fingerprint(tmp_path):
    assert running_code() == source_fingerprint(PACKAGE)
    copy = shutil.copytree(PACKAGE, tmp_path / "gradalign", ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(copy) == running_code()
    edited = copy / "provenance.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    assert source_fingerprint(copy) != running_code()


def test_fingerprint_against_an_independent_digest(tmp_path):
    root = tree(tmp_path / "pkg", {"b.py": "B", "a/z.py": "Z"})
    digest = hashlib.sha256()  # written out by hand: files in path order ("a/z.py" < "b.py"), each as 8-byte
    for name, text in (("a/z.py", b"Z"), ("b.py", b"B")):  # big-endian length + bytes of its path, then content
        for part in (name.encode(), text):
            digest.update(len(part).to_bytes(8, "big") + part)
    assert source_fingerprint(root) == digest.hexdigest()[:FINGERPRINT_DIGITS]
