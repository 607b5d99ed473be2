"""Separation benchmark; `python benchmarks/separation.py ARGS` is `gradalign bench separation ARGS` (see README.md),
with the CLI's logging and one-line errors."""
import sys

from gradalign.cli import main

sys.exit(main(["bench", "separation", *sys.argv[1:]]))
