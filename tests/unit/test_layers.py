"""The package's layers, read from the source: every import, at module level or inside a
function, goes from a higher layer to a lower one, and never between siblings.

    common  <-  protocol  <-  {client, worker, server, autoalloc, http}  <-  app  <-  cli

`server` is the server core; `autoalloc` and `http` know it only through the read models and
the event hub in `common` and `protocol`; `app` is the composition root that wires them.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import hqpy

PACKAGE = Path(hqpy.__file__).parent
LAYERS: dict[str, int] = {
    "common": 0,
    "protocol": 1,
    "client": 2,
    "worker": 2,
    "server": 2,
    "autoalloc": 2,
    "http": 2,
    "journal": 2,
    "config": 2,
    "app": 3,
    "cli": 4,
    "__main__": 5,
}
ROOT = "__init__"
"""`hqpy/__init__.py` holds only the version; everything may import it."""
PENDING: set[tuple[str, str]] = set()
"""Arrows still to be removed (none left: keep it empty)."""


def subpackage(module: str) -> str | None:
    """`hqpy.server.state` -> `server`; `hqpy.__version__` (an attribute) -> the root."""
    parts = module.split(".")
    if parts[0] != "hqpy":
        return None
    if len(parts) == 1:
        return ROOT
    name = parts[1]
    if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").exists():
        return name
    return ROOT


def imports_of(source: str, module: str) -> set[str]:
    """Every hqpy module that the source of `module` imports, wherever the import stands."""
    tree = ast.parse(source)
    package = module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "hqpy"}


def edges() -> dict[tuple[str, str], list[str]]:
    """(from subpackage, to subpackage) -> the files that make that arrow."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        module = ".".join(rel.with_suffix("").parts)
        source = subpackage(module)
        assert source is not None
        for imported in imports_of(path.read_text(), module):
            target = subpackage(imported)
            if target is None or target == source or target == ROOT:
                continue
            out[(source, target)].append(str(rel))
    return out


def test_every_subpackage_has_a_layer() -> None:
    names = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    names |= {p.stem for p in PACKAGE.glob("*.py")} - {ROOT}
    assert names <= set(LAYERS), f"give these a layer in LAYERS: {sorted(names - set(LAYERS))}"


def test_imports_point_down_the_layers() -> None:
    wrong = {
        f"{a} -> {b} ({', '.join(sorted(set(files)))})"
        for (a, b), files in edges().items()
        if LAYERS[b] >= LAYERS[a] and (a, b) not in PENDING
    }
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_pending_arrows_still_exist() -> None:
    """A pending arrow that is gone must leave PENDING, so it cannot come back unnoticed."""
    gone = PENDING - set(edges())
    assert not gone, f"remove from PENDING: {sorted(gone)}"


def test_the_walker_sees_function_level_and_relative_imports() -> None:
    source = "def f():\n    from hqpy.autoalloc import service\n    from ..http import metrics\n"
    found = imports_of(source, "hqpy.server.probe")
    assert "hqpy.autoalloc.service" in found
    assert "hqpy.http.metrics" in found
    assert {subpackage(name) for name in found} >= {"autoalloc", "http"}
