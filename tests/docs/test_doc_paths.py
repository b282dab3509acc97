"""Every `hqpy/...` path the docs name exists, so the module map cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATH = re.compile(r"\bhqpy/[A-Za-z_][\w/]*\w(?:\.py)?/?")
"""A path starts with a letter: `hqpy/1` is the protocol's name."""
CELL_SIBLINGS = re.compile(r"`(hqpy/[\w/]+/)\w+\.py`((?:, `\w+\.py`)+)")


def named_paths(text: str) -> set[str]:
    """`hqpy/...` paths in `text`; `` `hqpy/cli/a.py`, `b.py` `` (a table cell listing a
    directory's files) names `hqpy/cli/b.py` too."""
    found = {m.group(0).rstrip("/") for m in PATH.finditer(text)}
    for m in CELL_SIBLINGS.finditer(text):
        found.update(m.group(1) + name for name in re.findall(r"`(\w+\.py)`", m.group(2)))
    return found


def test_named_paths_are_found() -> None:
    text = "see `hqpy/cli/main.py` and `hqpy/http/`; `hqpy/cli/a.py`, `b.py`, `c.py` |"
    assert named_paths(text) == {
        "hqpy/cli/main.py",
        "hqpy/http",
        "hqpy/cli/a.py",
        "hqpy/cli/b.py",
        "hqpy/cli/c.py",
    }


def test_every_path_in_the_docs_exists() -> None:
    missing = [
        f"{page.name}: {path}"
        for page in sorted((ROOT / "docs").glob("*.md"))
        for path in sorted(named_paths(page.read_text()))
        if not (ROOT / path).exists()
    ]
    assert not missing, "docs name paths that do not exist:\n" + "\n".join(missing)
