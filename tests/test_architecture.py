"""The structure rules of docs/architecture.md, checked on the source itself.

Imports are read with ``ast`` (nothing is imported): a module's run-time
imports are every import outside an ``if TYPE_CHECKING:`` block, at module
level or inside functions alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pylight"
# The longest a function may be, and the WebSocket handler class.
MAX_FUNCTION_LINES = 60
MAX_HANDLER_LINES = 150


def _sources() -> list[Path]:
    return sorted([*PACKAGE.glob("*.py"), *ROOT.glob("plugins/*/*.py")])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(path: Path) -> set[str]:
    """The ``pylight.*`` modules ``path`` imports at run time."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "pylight" and len(parts) > 1:
                found.add(parts[1])
            elif node.module == "pylight":
                found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pylight" and len(parts) > 1:
                    found.add(parts[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found & modules - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: runtime_imports(path) for path in PACKAGE.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = walk(target, [*path, target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = walk(start, [start])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_only_the_command_line_imports_the_composition_root() -> None:
    importers = sorted(name for name, deps in import_graph().items() if "app" in deps)
    assert importers == ["cli"]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_is_longer_than_the_limit(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"split these: {', '.join(long)}"


def test_the_websocket_handler_stays_a_thin_transport() -> None:
    tree = ast.parse((PACKAGE / "realtime.py").read_text(encoding="utf-8"))
    (handler,) = [node for node in tree.body
                  if isinstance(node, ast.ClassDef) and node.name == "FeedHandler"]
    assert handler.end_lineno - handler.lineno + 1 < MAX_HANDLER_LINES


def test_handlers_are_handed_collaborators_not_the_server() -> None:
    """No handler reaches through a server object (``self.app.``): each gets what it
    uses through ``initialize()``."""
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        assert "self.app." not in text or path.parent.name == "pylight_redis_bus", path
