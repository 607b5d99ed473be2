"""The README and docs/ stay true: their TRL examples run as written, wherever a `<!-- tested: ... -->` marker puts
them, and the configuration reference lists every field."""

import dataclasses
import re
from pathlib import Path

import pytest

from gradalign.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def readme_example(label: str = "") -> tuple[str, str]:
    """The python snippet marked `<!-- tested: tests/test_readme.py{label} -->` in the README or a docs page, and the
    page's name (for tracebacks); exactly one page holds it."""
    marker = rf"<!-- tested: tests/test_readme.py{re.escape(label)} -->\s*```python\n(.*?)```"
    found = [(m.group(1), page.relative_to(ROOT).as_posix()) for page in PAGES
             for m in re.finditer(marker, page.read_text(), re.S)]
    assert len(found) == 1, f"README and docs/ hold the tested TRL example{label} {len(found)} times, not once"
    return found[0]


@pytest.mark.slow
def test_trl_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    example, page = readme_example()
    exec(compile(example, page, "exec"), namespace)
    trainer = namespace["trainer"]
    history = trainer.selection_history
    assert [h["round"] for h in history] == [0, 1]  # 8 steps, a new selection every 4
    assert all(len(h["selected"]) == 16 for h in history)  # floor(64 / 4) per round
    assert trainer.state.global_step == 8


def test_config_reference_lists_every_field_with_its_default():
    text = (ROOT / "docs" / "configuration.md").read_text()
    stale = []
    for f in dataclasses.fields(RunConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f"| `{f.name}` | `{default}` |" not in text:
            stale.append(f.name)
    assert not stale, f"docs/configuration.md lacks or misstates: {stale}"


def test_ci_runs_the_readme_test_command():
    root = README.parent
    assert "make test" in README.read_text()
    assert (root / ".ci" / "run").read_text().strip().endswith("make test")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nonzero-variance", "gradalign"])
def test_dynamic_sampling_recipe_runs_as_written(tmp_path, monkeypatch, capsys, method):
    """The recipe (docs/trl.md) after the README example's setup; `gradalign` as its comment says (with the
    validation set)."""
    monkeypatch.chdir(tmp_path)
    setup = readme_example()[0].split("trainer = GradAlignGRPOTrainer(")[0]
    recipe, page = readme_example(" (dynamic sampling)")
    if method == "gradalign":
        recipe = recipe.replace('"nonzero-variance", None', '"gradalign", validation')
    namespace: dict = {}
    exec(compile(setup + recipe, page, "exec"), namespace)
    trainer = namespace["trainer"]
    history = trainer.selection_history
    assert trainer.state.global_step == 4 and [h["round"] for h in history] == [0, 1, 2, 3]  # a selection per step
    for h in history:
        kept = len(set(h["selected"]))
        assert kept <= 16  # floor(32 / 2)
        if method == "nonzero-variance":  # exactly the zero-variance groups are dropped
            assert h["filtered"] == h["zero_variance"]
        # a full step trains on each selected problem's own selection group; a short one repeats some problems,
        # and a repeated prompt is sampled again (its second group has no selection completions left)
        assert h["reused"]["groups"] == 16 if kept == 16 else h["reused"]["groups"] <= kept
    assert sum(h["reused"]["groups"] for h in history) > 0
