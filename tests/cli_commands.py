"""Several `gradalign` commands in one process, in order, for `tests/test_distributed.py` to launch under torchrun
once: the processes start, import and join the process group once for all of them. argv: one JSON list of
argument lists. Exits with the first command's status that is not 0."""

import json
import sys

from gradalign.cli import main


def run_all(commands: list[list[str]]) -> int:
    for argv in commands:
        code = main(argv)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_all(json.loads(sys.argv[1])))
