"""Subset benchmark; `python benchmarks/subset.py ARGS` is `gradalign bench subset ARGS` (see README.md)."""
import sys

from gradalign.bench.subset import main

sys.exit(main(sys.argv[1:]))
