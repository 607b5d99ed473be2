"""Rewrite the generated part of docs/configuration.md from `RunConfig`: `python docs/generate_configuration.py`.

The part between the two markers is `gradalign.config.reference_markdown()`, one table per section of the dataclass
(field, default, help); everything around it is written by hand. tests/test_docs.py fails when the page and the
dataclass differ.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's gradalign, not an installed one

from gradalign.config import reference_markdown  # noqa: E402

PAGE = Path(__file__).with_name("configuration.md")
BEGIN = "<!-- generated from RunConfig by docs/generate_configuration.py: edit the dataclass, not this part -->"
END = "<!-- end of the generated part -->"


def spliced(text: str) -> str:
    """`text` with its generated part rewritten from the dataclass."""
    head, found, rest = text.partition(BEGIN)
    assert found and END in rest, f"{PAGE.name} lost its markers: {BEGIN} ... {END}"
    tail = rest.partition(END)[2]
    return f"{head}{BEGIN}\n\n{reference_markdown()}\n{END}{tail}"


if __name__ == "__main__":
    PAGE.write_text(spliced(PAGE.read_text()))
