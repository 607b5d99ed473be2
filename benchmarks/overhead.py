"""Overhead benchmark; `python benchmarks/overhead.py ARGS` is `gradalign bench overhead ARGS` (see README.md), with the
CLI's logging and one-line errors."""
import sys

from gradalign.cli import main

sys.exit(main(["bench", "overhead", *sys.argv[1:]]))
