"""Scoring benchmark; `python benchmarks/scoring.py ARGS` is `gradalign bench scoring ARGS` (see README.md)."""
import sys

from gradalign.bench.scoring import main

sys.exit(main(sys.argv[1:]))
