from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hqpy.common.tables import horizontal_table, vertical_table


def parse_table(text: str) -> list[list[str]]:
    """Reads a table back the way HQ's test suite does: strip cells, join continuations."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("+-"):
            continue
        assert line.startswith("|") and line.endswith("|"), line
        cells = [c.strip() for c in line[1:-1].split("|")]
        if rows and cells[0] == "":
            for i, cell in enumerate(cells):
                if cell:
                    rows[-1][i] += "\n" + cell
        else:
            rows.append(cells)
    return rows


def test_horizontal_table_matches_hq_layout() -> None:
    text = horizontal_table(
        ["ID", "State", "Hostname"], [["1", "RUNNING", "worker1"], ["2", "RUNNING", "w2"]]
    )
    assert text == (
        "+----+---------+----------+\n"
        "| ID | State   | Hostname |\n"
        "+----+---------+----------+\n"
        "| 1  | RUNNING | worker1  |\n"
        "| 2  | RUNNING | w2       |\n"
        "+----+---------+----------+"
    )


def test_horizontal_table_has_exactly_three_borders_and_a_header_without_rows() -> None:
    text = horizontal_table(["ID", "State"], [])
    lines = text.split("\n")
    assert sum(line.startswith("+-") for line in lines) == 3
    assert lines[1] == "| ID | State |"
    assert not text.endswith("\n")


def test_multiline_cell_continues_on_rows_with_empty_first_cell() -> None:
    text = horizontal_table(["Task ID", "Error"], [["1", "line one\nline two\n"], ["2", "x"]])
    lines = text.split("\n")
    assert lines[3] == "| 1       | line one |"
    assert lines[4] == "|         | line two |"
    assert lines[5] == "| 2       | x        |"
    assert sum(line.startswith("+-") for line in lines) == 3


def test_vertical_table_has_two_borders_and_empty_values() -> None:
    text = vertical_table([("Server UID", "abc123"), ("Journal path", "")])
    assert text == (
        "+--------------+--------+\n"
        "| Server UID   | abc123 |\n"
        "| Journal path |        |\n"
        "+--------------+--------+"
    )


def test_vertical_table_multiline_value() -> None:
    state = "[########....]\nRUNNING (4)\nFINISHED (4)\nWAITING (2)"
    text = vertical_table([("ID", "1"), ("State", state)])
    assert parse_table(text) == [["ID", "1"], ["State", state]]
    assert "|       | RUNNING (4)    |" in text


def test_bold_header_wraps_cells_in_ansi_but_keeps_alignment() -> None:
    text = horizontal_table(["ID", "Name"], [["10", "x"]], bold_header=True)
    header = text.split("\n")[1]
    assert header == "| \x1b[1mID\x1b[0m | \x1b[1mName\x1b[0m |"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert plain == horizontal_table(["ID", "Name"], [["10", "x"]])


def test_row_with_wrong_cell_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        horizontal_table(["A", "B"], [["1"]])


def test_all_lines_have_equal_width() -> None:
    text = horizontal_table(["A", "Bee"], [["long cell", "x\nlonger line"]])
    assert len({len(line) for line in text.split("\n")}) == 1


cell_text = st.text(
    alphabet=st.characters(
        whitelist_categories=("L", "N"), whitelist_characters=" -_.:", max_codepoint=0x7F
    ),
    max_size=12,
).map(str.strip)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    ncols = draw(st.integers(min_value=1, max_value=4))
    header = draw(st.lists(cell_text.filter(bool), min_size=ncols, max_size=ncols))
    first = cell_text.filter(bool)
    other = st.lists(cell_text, min_size=1, max_size=3).map("\n".join)
    row = st.tuples(first, st.lists(other, min_size=ncols - 1, max_size=ncols - 1)).map(
        lambda t: [t[0], *t[1]]
    )
    rows = draw(st.lists(row, max_size=5))
    return header, rows


def _normal(cell: str) -> str:
    # Readers cannot see empty continuation lines, and a trailing newline is not significant.
    first, *rest = cell.split("\n")
    return "\n".join([first, *(line for line in rest if line)])


@given(tables())
def test_horizontal_table_parses_back(table: tuple[list[str], list[list[str]]]) -> None:
    header, rows = table
    text = horizontal_table(header, rows)
    parsed = parse_table(text)
    assert parsed[0] == header
    assert parsed[1:] == [[_normal(c) for c in row] for row in rows]
    assert sum(line.startswith("+-") for line in text.split("\n")) == 3


@given(st.lists(st.tuples(cell_text.filter(bool), cell_text), min_size=2, max_size=8))
def test_vertical_table_parses_back(rows: list[tuple[str, str]]) -> None:
    text = vertical_table(rows)
    assert parse_table(text) == [list(row) for row in rows]
    assert sum(line.startswith("+-") for line in text.split("\n")) == 2
