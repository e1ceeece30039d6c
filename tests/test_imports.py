"""The package's import graph: every module imports, and no two modules import each other."""

from __future__ import annotations

import ast
import importlib
import pathlib
import types

import jaxconv as jc

PACKAGE = pathlib.Path(jc.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: pathlib.Path, module: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, at any depth of its code (lazy imports too).

    ``from jaxconv import x`` imports the module ``jaxconv.x`` where there is
    one, and the package ``jaxconv`` (its ``__init__``) only for a name defined there.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]).strip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """``{module: jaxconv modules it imports}`` over every ``.py`` file of the package."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imported(path, name, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 20
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_and_public_names_resolve():
    for name in import_graph():
        if not name.endswith("__main__"):
            importlib.import_module(name)
    for name in jc.__all__:
        assert getattr(jc, name) is not None, name


def test_user_facing_submodules_are_attributes():
    for name in ("checkpoint", "data", "distributed", "models", "ops", "train", "layers", "structure"):
        assert isinstance(getattr(jc, name), types.ModuleType), name
    assert not isinstance(jc.parallel, types.ModuleType)  # the combinator, not a module
    assert callable(jc.checkpoint.save) and callable(jc.data.load_dataset)
    assert callable(jc.distributed.data_mesh) and callable(jc.summary)
