"""ASCII tables in HyperQueue's cli-table layout, which scripts and tests parse line by line.

The layout rules (3 border lines for lists, 2 for key/value views, multi-line cells continued on
rows with an empty first cell) are what readers rely on, so they are kept exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"


def _width(text: str) -> int:
    """Visible width: colour escapes take no space on the terminal."""
    if "\x1b" in text:
        text = _ANSI_RE.sub("", text)
    return len(text)


def _cell_lines(text: str) -> list[str]:
    """Lines of a cell, like Rust's `str::lines`: one trailing newline adds no line."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _border(widths: Sequence[int]) -> str:
    return "+" + "+".join("-" * (w + 2) for w in widths) + "+"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = (f" {c}{' ' * (w - _width(c))} " for c, w in zip(cells, widths, strict=True))
    return "|" + "|".join(padded) + "|"


def _expand(row: Sequence[str]) -> list[list[str]]:
    """One table row per line of the tallest cell; other cells are empty on continuation rows."""
    split = [_cell_lines(cell) for cell in row]
    height = max((len(lines) for lines in split), default=1)
    return [[lines[i] if i < len(lines) else "" for lines in split] for i in range(height)]


def horizontal_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, bold_header: bool = False
) -> str:
    """A list table: border, header, border, data rows, border (no trailing newline)."""
    for index, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(
                f"table row {index} has {len(row)} cells, expected {len(header)} (one per column)"
            )
    header_lines = _expand(header)
    body = [line for row in rows for line in _expand(row)]
    widths = [0] * len(header)
    for line in header_lines + body:
        for i, cell in enumerate(line):
            widths[i] = max(widths[i], _width(cell))
    if bold_header:
        header_lines = [[f"{_BOLD}{c}{_RESET}" if c else c for c in line] for line in header_lines]
    border = _border(widths)
    out = [border]
    out.extend(_row(line, widths) for line in header_lines)
    out.append(border)
    out.extend(_row(line, widths) for line in body)
    out.append(border)
    return "\n".join(out)


def vertical_table(rows: Sequence[tuple[str, str]]) -> str:
    """A key/value table: border, one `| Key | Value |` row per field, border."""
    lines = [line for key, value in rows for line in _expand((key, value))]
    widths = [0, 0]
    for line in lines:
        for i, cell in enumerate(line):
            widths[i] = max(widths[i], _width(cell))
    border = _border(widths)
    return "\n".join([border, *(_row(line, widths) for line in lines), border])
