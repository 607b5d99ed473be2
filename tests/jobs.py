"""Several jobs in one process, in order, for `tests/test_distributed.py` to launch under torchrun once: the
processes start, import and join the process group once for all of them. argv: one JSON list of jobs, each the
arguments of a `gradalign` command, or a script of tests/ (`NAME.py`) and its arguments (its `main` is called).
Exits with the status of the first command that does not return 0; a script's error propagates."""

import json
import runpy
import sys

from gradalign.cli import main


def run_all(jobs: list[list[str]]) -> int:
    for job in jobs:
        if job[0].endswith(".py"):
            runpy.run_path(job[0])["main"](*job[1:])
        elif code := main(job):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_all(json.loads(sys.argv[1])))
