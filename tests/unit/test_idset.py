from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqpy.common.idset import (
    MAX_ID,
    IdRangeError,
    IdSet,
    Selector,
    format_id_set,
    parse_id_set,
    parse_selector,
)

id_lists = st.lists(st.integers(min_value=0, max_value=300), max_size=60)


@st.composite
def id_set_texts(draw: st.DrawFn) -> tuple[str, set[int]]:
    """A random `--array`-style text and the ids it denotes."""
    items = []
    expected: set[int] = set()
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        first = draw(st.integers(min_value=0, max_value=200))
        kind = draw(st.sampled_from(["single", "range", "step"]))
        if kind == "single":
            items.append(str(first))
            expected.add(first)
        elif kind == "range":
            last = first + draw(st.integers(min_value=0, max_value=50))
            items.append(f"{first}-{last}")
            expected.update(range(first, last + 1))
        else:
            last = first + draw(st.integers(min_value=1, max_value=50))
            step = draw(st.integers(min_value=1, max_value=last - first))
            items.append(f"{first}-{last}:{step}")
            expected.update(range(first, last + 1, step))
    return ",".join(items), expected


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("5", [5]),
        ("1-3", [1, 2, 3]),
        ("1-10,20", [*range(1, 11), 20]),
        ("0-10:2", [0, 2, 4, 6, 8, 10]),
        ("2-9:3", [2, 5, 8]),
        (" 1 , 3 - 4 ", [1, 3, 4]),
        ("1_0-1_2", [10, 11, 12]),
        ("7,3,5", [3, 5, 7]),
        ("101-101", [101]),
    ],
)
def test_parse_id_set_accepts_hq_array_syntax(text: str, ids: list[int]) -> None:
    assert list(parse_id_set(text)) == ids


@pytest.mark.parametrize(
    "text", ["", ",", "1,", "a", "1-", "-1", "3-1", "1-10:0", "0-10:11", "1--2", "1__0", "1 2"]
)
def test_parse_id_set_rejects_malformed_input(text: str) -> None:
    with pytest.raises(ValueError, match="invalid id set"):
        parse_id_set(text)


def test_parse_id_set_merges_overlaps_unless_forbidden() -> None:
    assert format_id_set(parse_id_set("0-10,5-12")) == "0-12"
    with pytest.raises(ValueError, match="overlap"):
        parse_id_set("0-10, 5", allow_overlap=False)


def test_interleaved_stepped_ranges_do_not_count_as_overlap() -> None:
    assert format_id_set(parse_id_set("0-10:2,1-11:2", allow_overlap=False)) == "0-11"


def test_huge_range_is_constant_memory() -> None:
    ids = parse_id_set("0-999999")
    stepped = parse_id_set("0-1000000:2")
    big = parse_id_set("1-1000_000")
    assert len(ids.runs()) == 1 and len(stepped.runs()) == 1
    assert len(ids) == 1_000_000 and len(stepped) == 500_001 and len(big) == 1_000_000
    assert 999_999 in ids and 1_000_000 not in ids
    assert 1_000_000 in stepped and 999_999 not in stepped
    assert stepped.max() == 1_000_000 and ids.min() == 0


def test_range_difference_stays_compact() -> None:
    result = parse_id_set("0-999999").difference([5, 6, 7, 500_000])
    assert result.ranges() == [(0, 4), (8, 499_999), (500_001, 999_999)]


def test_union_of_disjoint_stepped_sets_keeps_runs() -> None:
    a = parse_id_set("0-1000000:2")
    b = parse_id_set("2000000-3000000:2")
    union = a.union(b)
    assert len(union.runs()) <= 2
    assert len(union) == len(a) + len(b)


@pytest.mark.parametrize(
    ("ids", "text"),
    [
        ([], ""),
        ([3], "3"),
        ([2, 7, 9, *range(20, 31)], "2,7,9,20-30"),
        ([*range(1, 7), *range(10, 21)], "1-6,10-20"),
        ([2, 3], "2-3"),
        ([5, 1, 3, 2], "1-3,5"),
    ],
)
def test_format_id_set_compresses_consecutive_runs(ids: list[int], text: str) -> None:
    assert format_id_set(ids) == text


def test_str_of_id_set_is_its_formatted_form() -> None:
    assert str(parse_id_set("0-6:2,7")) == "0,2,4,6-7"


def test_equality_is_semantic_regardless_of_how_the_set_was_built() -> None:
    assert (
        parse_id_set("0-4:2")
        == IdSet.from_ids([0, 2, 4])
        == IdSet.from_ranges([(0, 0), (2, 2), (4, 4)])
    )
    assert hash(parse_id_set("1-3")) == hash(IdSet.from_ids([3, 2, 1]))
    assert parse_id_set("1-3") != parse_id_set("1-4")


def test_from_ranges_takes_inclusive_pairs_and_merges() -> None:
    assert IdSet.from_ranges([(5, 9), (0, 2), (3, 4)]).ranges() == [(0, 9)]
    with pytest.raises(ValueError, match="first <= last"):
        IdSet.from_ranges([(3, 1)])


def test_negative_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        IdSet.from_ids([-1])


def test_empty_set_is_falsy_and_has_no_min() -> None:
    empty = IdSet()
    assert not empty and len(empty) == 0 and list(empty) == []
    with pytest.raises(ValueError):
        empty.min()
    with pytest.raises(ValueError):
        empty.max()


@given(id_lists)
def test_format_then_parse_round_trips(ids: list[int]) -> None:
    text = format_id_set(ids)
    if ids:
        assert list(parse_id_set(text)) == sorted(set(ids))
    else:
        assert text == ""


@given(id_set_texts())
def test_parsed_set_has_exactly_the_denoted_ids(case: tuple[str, set[int]]) -> None:
    text, expected = case
    ids = parse_id_set(text)
    assert list(ids) == sorted(expected)
    assert len(ids) == len(expected)
    assert ids == IdSet.from_ids(expected)
    assert all((i in ids) == (i in expected) for i in range(-1, 260))


@given(id_lists, id_lists)
def test_set_operations_match_python_sets(a: list[int], b: list[int]) -> None:
    x, y = IdSet.from_ids(a), IdSet.from_ids(b)
    sa, sb = set(a), set(b)
    assert list(x.union(y)) == sorted(sa | sb)
    assert list(x.intersection(y)) == sorted(sa & sb)
    assert list(x.difference(y)) == sorted(sa - sb)
    assert x.union(y) == IdSet.from_ids(sa | sb)
    assert x.intersection(y) == IdSet.from_ids(sa & sb)
    assert x.difference(y) == IdSet.from_ids(sa - sb)
    assert (x | y) == x.union(b)


@given(id_set_texts(), id_set_texts())
def test_set_operations_on_stepped_sets_match_python_sets(
    a: tuple[str, set[int]], b: tuple[str, set[int]]
) -> None:
    x, y = parse_id_set(a[0]), parse_id_set(b[0])
    assert list(x | y) == sorted(a[1] | b[1])
    assert list(x & y) == sorted(a[1] & b[1])
    assert list(x - y) == sorted(a[1] - b[1])
    assert (x | y) == IdSet.from_ids(a[1] | b[1])


@given(id_lists)
def test_queries_match_python_set(ids: list[int]) -> None:
    s = IdSet.from_ids(ids)
    expected = set(ids)
    assert len(s) == len(expected)
    assert bool(s) == bool(expected)
    assert list(reversed(s)) == sorted(expected, reverse=True)
    if expected:
        assert s.min() == min(expected) and s.max() == max(expected)
    flat = [i for first, last in s.ranges() for i in range(first, last + 1)]
    assert flat == sorted(expected)
    assert all(b[0] > a[1] + 1 for a, b in zip(s.ranges(), s.ranges()[1:], strict=False))


def test_parse_selector_accepts_all_last_and_ids() -> None:
    assert parse_selector("all") == Selector("all", None)
    assert parse_selector(" last ") == Selector("last", None)
    assert parse_selector("1-3,7") == Selector("ids", IdSet.from_ids([1, 2, 3, 7]))


def test_parse_selector_rejects_other_words() -> None:
    with pytest.raises(ValueError, match="expected all, last or ids"):
        parse_selector("first")


def test_constructor_accepts_ids_in_any_order() -> None:
    assert IdSet([5, 1, 2, 2]) == IdSet.from_ids([1, 2, 5])
    assert IdSet(range(0, 10, 3)) == parse_id_set("0-9:3")
    assert IdSet(i for i in [3]) == parse_id_set("3")


# --- 32-bit ids (issue 8.1) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("0-9223372036854775807", "9223372036854775807"),
        ("0-99999999999999999999", "99999999999999999999"),
        ("4294967296", "4294967296"),
        ("1,2,4294967296-4294967297", "4294967296"),
        ("0-10:99999999999", "99999999999"),
        ("00000004294967296", "4294967296"),
        ("1" * 5000, "111111111111...(5000 digits)"),
    ],
)
def test_ids_over_32_bits_are_refused_naming_the_value(text: str, shown: str) -> None:
    with pytest.raises(IdRangeError, match=r"id " + re.escape(shown) + r" is out of range"):
        parse_id_set(text)


@pytest.mark.parametrize(("text", "shown"), [("-5", "-5"), ("1,-3", "-3"), ("2, - 7", "-7")])
def test_negative_ids_are_refused_naming_the_value(text: str, shown: str) -> None:
    with pytest.raises(IdRangeError, match=f"id {shown} is negative"):
        parse_id_set(text)


def test_selector_keeps_the_out_of_range_reason() -> None:
    with pytest.raises(ValueError, match="id 99999999999999999999 is out of range"):
        parse_selector("0-99999999999999999999")


def test_the_largest_32_bit_id_is_accepted() -> None:
    ids = parse_id_set(f"0-{MAX_ID}")
    assert len(ids) == 2**32 and ids.max() == MAX_ID and MAX_ID in ids


@given(st.integers(min_value=MAX_ID + 1, max_value=10**40), st.sampled_from(["{}", "0-{}", "1,{}"]))
def test_any_id_past_32_bits_is_refused(value: int, shape: str) -> None:
    with pytest.raises(IdRangeError, match=str(value)):
        parse_id_set(shape.format(value))


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=MAX_ID),
            st.integers(min_value=0, max_value=MAX_ID),
            st.integers(min_value=1, max_value=MAX_ID),
        ),
        min_size=1,
        max_size=5,
    )
)
@settings(deadline=None, max_examples=40)
def test_parsed_ranges_anywhere_in_32_bits_have_the_right_size(
    items: list[tuple[int, int, int]],
) -> None:
    """Counting, min, max and membership are arithmetic on runs: any 32-bit range parses."""
    ranges = [range(min(a, b), max(a, b) + 1, step) for a, b, step in items]
    texts = [
        f"{r.start}-{r.stop - 1}:{r.step}" if 1 <= r.step <= r.stop - 1 - r.start else str(r.start)
        for r in ranges
    ]
    try:
        ids = parse_id_set(",".join(texts))
    except ValueError as e:
        assert "too many ids to merge" in str(e)
        return
    pieces = [parse_id_set(t) for t in texts]
    assert ids.min() == min(p.min() for p in pieces)
    assert ids.max() == max(p.max() for p in pieces)
    assert all(p.min() in ids and p.max() in ids for p in pieces)
    if len(pieces) == 1:
        assert len(ids) == len(range(*pieces[0].runs()[0]))


def test_set_algebra_on_whole_32_bit_ranges_stays_arithmetic() -> None:
    """These would walk billions of ids one by one (and never return) if done id by id."""
    everything = parse_id_set(f"0-{MAX_ID}")
    thirds = parse_id_set(f"0-{MAX_ID}:3")
    odd = parse_id_set(f"1-{MAX_ID}:2")
    assert (everything & thirds).runs() == ((0, 2**32, 3),)
    assert (thirds & odd).runs() == ((3, 2**32, 6),)
    assert (everything - odd).runs() == ((0, MAX_ID, 2),)
    assert len(everything - parse_id_set("5-10,100-4000000000")) == 2**32 - 6 - 3_999_999_901
    assert (parse_id_set("0-100:5") - parse_id_set("10-20")).runs() == ((0, 6, 5), (25, 101, 5))


steps = st.integers(min_value=1, max_value=7)


@given(
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=0, max_value=80),
    steps,
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=0, max_value=80),
    steps,
)
def test_run_arithmetic_matches_python_sets(
    a0: int, an: int, a_step: int, b0: int, bn: int, b_step: int
) -> None:
    ra, rb = range(a0, a0 + an + 1, a_step), range(b0, b0 + bn + 1, b_step)
    x, y = IdSet.from_ids(ra), IdSet.from_ids(rb)
    assert list(x & y) == sorted(set(ra) & set(rb))
    assert list(x - y) == sorted(set(ra) - set(rb))
    assert x - y == IdSet.from_ids(set(ra) - set(rb))
    assert len(x & y) == len(set(ra) & set(rb))


def test_overlapping_stepped_items_merge_arithmetically_or_are_refused() -> None:
    assert parse_id_set(f"0,0-{MAX_ID}:2").runs() == ((0, MAX_ID, 2),)
    assert parse_id_set(f"0-8:2,0-{MAX_ID}:2,5").runs() == ((0, 3, 2), (4, 7, 1), (8, MAX_ID, 2))
    with pytest.raises(ValueError, match="too many ids to merge"):
        parse_id_set(f"0-{MAX_ID}:2,0-{MAX_ID}:3")
