"""Scaling benchmark; `python benchmarks/scaling.py ARGS` is `gradalign bench scaling ARGS` (see README.md), with the
CLI's logging and one-line errors."""
import sys

from gradalign.cli import main

sys.exit(main(["bench", "scaling", *sys.argv[1:]]))
