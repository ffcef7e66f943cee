"""The package's layers: no import cycle, imports at the top, the core free of training."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "weaklesion"
# The array-only post-processing core and the file formats below it.
CORE = (
    "weaklesion._validation",
    "weaklesion.io",
    "weaklesion.writing",
    "weaklesion.targets",
    "weaklesion.counting",
    "weaklesion.detection",
    "weaklesion.metrics",
    "weaklesion.threads",
)
ABOVE_CORE = ("weaklesion.data", "weaklesion.models", "weaklesion.config", "weaklesion.run")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(tree: ast.AST, module: str, is_package: bool, modules) -> set[str]:
    """Modules of the package that ``tree`` imports, at any depth (function bodies too),
    with the packages that importing them runs (``a.b.c`` runs ``a/b/__init__.py``)."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        while name and name != "weaklesion":
            if name != module and not module.startswith(name + "."):
                found.add(name)
            name = name.rpartition(".")[0]
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (top-level and inside functions)."""
    modules = _modules()
    return {
        module: _imports(ast.parse(path.read_text()), module, path.name == "__init__.py", modules)
        for module, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle_and_passes_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_graph_sees_imports_inside_functions_and_the_packages_they_run():
    modules = {"weaklesion.a", "weaklesion.b", "weaklesion.p", "weaklesion.p.c"}
    tree = ast.parse("def f():\n    from weaklesion.p.c import x\n    import weaklesion.b\n")
    found = _imports(tree, "weaklesion.a", False, modules)
    assert found == {"weaklesion.b", "weaklesion.p", "weaklesion.p.c"}


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_core_imports_nothing_above_it():
    graph = import_graph()
    for module in CORE:
        above = {
            target
            for target in graph[module]
            if not any(target == core or target.startswith(core + ".") for core in CORE)
        }
        assert not above, f"{module} imports {sorted(above)}"
    for module, targets in graph.items():
        if module.startswith(ABOVE_CORE):
            assert not any(
                t.startswith(("weaklesion.training", "weaklesion.inference")) for t in targets
            ), module


def _function_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    yield node, inner


def _is_command(module: str) -> bool:
    """Whether ``module`` is the command's package, which imports lazily so that
    ``weaklesion --help`` does not wait for torch."""
    return module == "weaklesion.cli" or module.startswith("weaklesion.cli.")


@pytest.mark.parametrize("module", sorted(m for m in _modules() if not _is_command(m)))
def test_imports_inside_functions_say_why(module):
    """Outside the command (which imports lazily for a fast ``--help``), an import inside
    a function is allowed only where the function's docstring says why."""
    for function, statement in _function_imports(_modules()[module]):
        docstring = ast.get_docstring(function) or ""
        assert "imported here" in docstring, (
            f"{module}.{function.name} line {statement.lineno}: an import inside a function "
            "without a reason in its docstring"
        )
