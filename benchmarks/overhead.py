"""Overhead benchmark; `python benchmarks/overhead.py ARGS` is `gradalign bench overhead ARGS` (see README.md)."""
import sys

from gradalign.bench.overhead import main

sys.exit(main(sys.argv[1:]))
