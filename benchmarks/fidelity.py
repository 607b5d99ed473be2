"""Fidelity benchmark; `python benchmarks/fidelity.py ARGS` is `gradalign bench fidelity ARGS` (see README.md)."""
import sys

from gradalign.bench.fidelity import main

sys.exit(main(sys.argv[1:]))
