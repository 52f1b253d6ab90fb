"""The layering of docs/ARCHITECTURE.md holds in the code: every module is in its table, no
module imports one of a higher layer, and the project's modules import each other in no
cycle (lazy imports inside functions count: they are dependencies too)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "refusal_lens"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|")


@cache
def layers() -> dict[str, int]:
    """``{module or package: layer}`` from the module table of docs/ARCHITECTURE.md."""
    table = {}
    for line in ARCHITECTURE.read_text().splitlines():
        match = ROW.match(line)
        if match:
            for name in re.findall(r"`(refusal_lens[\w.]*)`", match.group(2)):
                table[name] = int(match.group(1))
    assert table, "docs/ARCHITECTURE.md has no module table (| layer | `refusal_lens.x` | job |)"
    return table


@cache
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int | None:
    """The layer of the longest table entry that is ``module`` or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in layers():
            return layers()[name]
    return None


def resolve(module: str) -> str:
    """``module`` or the nearest package above it that exists (``from pkg import name``)."""
    while module not in modules() and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


@cache
def imports() -> dict[str, set[str]]:
    """Every import of a project module, at module level or inside a function."""
    graph: dict[str, set[str]] = {}
    for name, path in modules().items():
        found = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                if target.startswith("refusal_lens"):
                    # `from package import submodule` depends on the submodule, not on the
                    # package's __init__ (which runs first for any submodule anyway)
                    submodules = {f"{target}.{a.name}" for a in node.names} & modules().keys()
                    found.update(submodules)
                    if len(submodules) < len(node.names):
                        found.add(resolve(target))
            elif isinstance(node, ast.Import):
                found.update(resolve(a.name) for a in node.names if a.name.startswith("refusal_lens"))
        found.discard(name)
        graph[name] = found
    return graph


def test_every_module_is_in_the_architecture_table():
    missing = sorted(m for m in modules() if m != "refusal_lens" and layer_of(m) is None)
    assert not missing, f"add these to the module table of docs/ARCHITECTURE.md: {missing}"


def test_the_table_names_only_modules_that_exist():
    ghosts = sorted(name for name in layers() if name not in modules())
    assert not ghosts, f"docs/ARCHITECTURE.md names modules that do not exist: {ghosts}"


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
                    for src, targets in imports().items() if src != "refusal_lens"
                    for dst in targets if dst != "refusal_lens" and layer_of(dst) > layer_of(src))
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def _cycle() -> list[str] | None:
    graph = imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("low", ["refusal_lens.models", "refusal_lens.saes", "refusal_lens.interventions"])
def test_the_lowest_layers_never_name_the_organism_pipeline_or_cli(low):
    names = [m for m in modules() if m == low or m.startswith(low + ".")]
    high = ("refusal_lens.organism", "refusal_lens.pipeline", "refusal_lens.cli", "refusal_lens.report")
    for name in names:
        assert not any(dst.startswith(high) for dst in imports()[name]), (name, imports()[name])
