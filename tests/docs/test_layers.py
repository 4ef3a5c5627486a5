"""The layers depend only downward, and no file imports itself back through others.

Every import of every module of ``triton_embed`` (``kernels/`` and ``bench/`` included, under their installed
names) is read from its source, function-level ones too: a cycle hidden inside a function is a cycle all the
same. A package's ``__init__`` re-exports what lies below it and takes the highest rank it imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"triton_embed": REPO / "triton_embed", "triton_embed.kernels": REPO / "kernels",
         "triton_embed.bench": REPO / "bench"}
#: Each module's layer (the longest matching prefix wins): a module may import its own layer and those below.
LAYERS = {
    "triton_embed.kernels": 0,
    "triton_embed._version": 1, "triton_embed.runtime": 1, "triton_embed.tuning": 1,
    "triton_embed.reference": 2, "triton_embed.quantized.formats": 2, "triton_embed.quantized.reference": 2,
    "triton_embed.ops": 3, "triton_embed.quantized.ops": 3,
    "triton_embed.functional": 4,
    "triton_embed.nn": 5, "triton_embed.quantized": 5,
    "triton_embed.parallel": 6, "triton_embed.convert": 6,
    "triton_embed.bench": 7,
}


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module: name -> (file, is a package ``__init__``)."""
    found = {}
    for root, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            package = parts[-1] == "__init__"
            found[".".join([root, *(parts[:-1] if package else parts)])] = (path, package)
    return found


MODULES = modules()


def imports(name: str) -> set[str]:
    """The modules of this project that ``name`` imports anywhere in its source."""
    path, package = MODULES[name]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module; else the source itself
                targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    found = set()
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    """The layer of a module (a package ``__init__``: the highest of what it imports, or its own prefix's)."""
    if MODULES[name][1] and name != "triton_embed.bench":
        below = [layer(other) for other in GRAPH[name]]
        return max(below, default=0)
    prefixes = [p for p in LAYERS if name == p or name.startswith(p + ".")]
    return LAYERS[max(prefixes, key=len)] if prefixes else max(LAYERS.values()) + 1


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return found


def test_no_import_cycle() -> None:
    assert cycles() == []


def test_every_import_points_down_the_layers() -> None:
    upward = [f"{name} (layer {layer(name)}) imports {other} (layer {layer(other)})"
              for name in sorted(GRAPH) for other in sorted(GRAPH[name])
              if name != "triton_embed" and layer(other) > layer(name)]
    assert upward == []


def test_the_kernels_import_no_torch() -> None:
    """Layer 0 is ``@triton.jit`` functions only: no torch allocation, no launch policy."""
    for name, (path, _) in MODULES.items():
        if name.startswith("triton_embed.kernels"):
            tree = ast.parse(path.read_text())
            roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
            roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and node.module and not node.level}
            assert "torch" not in roots, name


@pytest.mark.parametrize("edges", [{"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"x": {"y"}, "y": {"x"}}])
def test_the_cycle_finder_finds_cycles(monkeypatch, edges) -> None:
    monkeypatch.setattr(__import__(__name__), "GRAPH", edges)
    assert cycles() == [sorted(edges)]
