"""The tree's layers, checked: imports go one way (down), and no module imports itself back
through others, function-level imports included (only `if TYPE_CHECKING:` blocks are left
out: they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "collectors", "exporters")
# Lowest first: a module imports only from its own layer or below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("agent", "agent.core", "agent.dynamo_sim"),  # `agent` itself holds only the version
    ("collectors",),
    ("agent.diagnose",),
    ("agent.config",),
    ("exporters",),
    ("agent.runtime",),
    ("agent.tools",),
    ("agent.cli", "agent.__main__"),
)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in its body but TYPE_CHECKING blocks."""
    targets: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(candidate: str) -> str | None:
        while candidate and candidate not in known:
            candidate = candidate.rpartition(".")[0]
        return candidate or None

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            for child in getattr(node, "orelse", []):
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (found := resolve(alias.name)) is not None:
                    targets.add(found)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found = resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else resolve(base)
                if found is not None:
                    targets.add(found)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    targets.discard(name)
    return targets


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(path, name, set(found)) for name, path in found.items()}


def layer(module: str) -> int:
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


def test_every_module_is_in_a_layer() -> None:
    for module in modules():
        layer(module)


def test_imports_go_down() -> None:
    upward = sorted(
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph().items()
        for target in targets
        if layer(target) > layer(module)
    )
    assert upward == []


def test_no_import_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    assert cycles == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from agent.tools import inject\n"
        "def f():\n    from agent.config import Config\n"
        "from . import state\n"
    )
    known = {"agent.config", "agent.tools.inject", "agent.core.state"}
    assert imported(source, "agent.core.samples", known) == {"agent.config", "agent.core.state"}
