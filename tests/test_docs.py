"""The README and docs/ stay one short README plus one page per subject: the README fits in a few minutes' reading,
every page is linked from it, every relative link resolves to a file and heading, the configuration reference is the
one `RunConfig` generates, and every tested snippet is where its marker says, once."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def prose(path: Path) -> str:
    """The page without its fenced code blocks (a `# comment` in a YAML block is no heading, nor `[x](y)` a link)."""
    return FENCE.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page: lower case, punctuation dropped, spaces to hyphens; a
    repeated heading gets -1, -2, ..."""
    slugs, counts = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(f"{slug}-{counts[slug]}" if slug in counts else slug)
        counts[slug] = counts.get(slug, 0) + 1
    return slugs


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines; move the detail into docs/ (the aim is 250 at most)"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in LINK.findall(prose(README))}
    unlinked = [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked]
    assert not unlinked, f"README.md links to no {unlinked}"


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_configuration_reference_is_what_the_dataclass_generates():
    spec = importlib.util.spec_from_file_location("generate_configuration", DOCS / "generate_configuration.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    text = generator.PAGE.read_text()
    assert generator.spliced(text) == text, (
        "docs/configuration.md differs from RunConfig: run `python docs/generate_configuration.py`")


def test_every_tested_snippet_is_marked_once_and_its_test_exists():
    markers = [m for page in PAGES for m in re.findall(r"<!-- tested: (\S+)[^>]*-->", page.read_text())]
    assert {"tests/test_readme.py", "tests/test_trl_config.py"} <= set(markers)
    full = [m.group(0) for page in PAGES for m in re.finditer(r"<!-- tested: [^>]*-->", page.read_text())]
    assert len(full) == len(set(full)), f"a tested snippet's marker appears twice: {sorted(full)}"
    assert all((ROOT / test).exists() for test in markers), markers
