"""Savings benchmark; `python benchmarks/savings.py ARGS` is `gradalign bench savings ARGS` (see README.md), with the
CLI's logging and one-line errors."""
import sys

from gradalign.cli import main

sys.exit(main(["bench", "savings", *sys.argv[1:]]))
