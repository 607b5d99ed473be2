"""Imports between gradalign's top-level packages and modules run one way, down the order below: each may import
only what comes before it. Reports read what the curriculum writes (`curriculum.records`); the curriculum, which
trains and logs, never imports reports. Imports inside functions count too: a lazy import is still a cycle."""

import ast
from pathlib import Path

import gradalign

PACKAGE = Path(gradalign.__file__).parent

# Lowest first. The stages follow the data flow (problems → rollouts → gradients → scores → selection →
# training → reports); `evaluation` sits below `curriculum`, which evaluates the policy every round; `config`
# knows the stages' choices (task families, projection variants) and is read only by the layers that run them.
ORDER = ["provenance", "fileio", "distributed", "rewards", "data", "policy", "gradients", "selection", "evaluation",
         "config", "flags", "curriculum", "reports", "bench", "cli", "__init__"]


def unit(path: Path) -> str:
    """The top-level package or module a source file belongs to (`__init__` for the package's own)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: Path) -> set[str]:
    """Every gradalign module a source file imports, absolute and relative, at any depth of the file."""
    package = ["gradalign", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1])
            names.update([f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names])
    return {name for name in names if name.startswith("gradalign.")}


def import_graph() -> dict[str, set[str]]:
    """unit → the other units it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = unit(path)
        targets = {name.split(".")[1] for name in imported(path)} - {source}
        graph.setdefault(source, set()).update(targets)
    return graph


def test_the_graph_sees_relative_lazy_and_absolute_imports():
    graph = import_graph()
    assert "curriculum" in graph["reports"]  # relative: reports read `..curriculum.records`
    assert "gradients" in graph["config"]  # lazy, inside a method
    assert "curriculum" in graph["__init__"]


def test_every_unit_has_a_place_in_the_order():
    assert set(import_graph()) == set(ORDER)


def test_imports_run_down_the_order_only():
    rank = {name: i for i, name in enumerate(ORDER)}
    upward = sorted(f"{source} -> {target}" for source, targets in import_graph().items()
                    for target in targets if rank[target] >= rank[source])
    assert upward == []


def test_curriculum_never_imports_reports():
    assert "reports" not in import_graph()["curriculum"]
