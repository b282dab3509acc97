"""Selectors and id ranges worked out as ranges (issue 8.2), without a server."""

from __future__ import annotations

import random

import pytest

from hqpy.common.errors import RequestError
from hqpy.common.idset import IdSet, parse_id_set
from hqpy.server.selection import clip, id_text, intersect, parse_ids, select


def test_select_intersects_a_huge_range_with_the_existing_ids() -> None:
    items = {i: f"job{i}" for i in (1, 2, 3, 10)}
    found, missing = select(items, "2-4294967295")
    assert found == ["job2", "job3", "job10"]
    assert id_text(missing) == "4-9,11-4294967295"


def test_select_with_a_stepped_range_expands_only_the_existing_span() -> None:
    items = dict.fromkeys(range(100), "x")
    found, missing = select(items, "0-4000000000:2")
    assert len(found) == 50
    assert id_text(missing) == "100-4000000000:2"


def test_select_all_and_last() -> None:
    items = {1: "a", 5: "b"}
    assert select(items, "all") == (["a", "b"], IdSet())
    assert select(items, "last") == (["b"], IdSet())
    assert select({}, "last") == ([], IdSet())


@pytest.mark.parametrize("text", ["1-9223372036854775807", "4294967296", "0-99999999999999999999"])
def test_ids_of_32_bits_or_more_are_refused(text: str) -> None:
    with pytest.raises(RequestError, match="ids are 32-bit, at most 4294967295"):
        parse_ids(text)
    with pytest.raises(RequestError, match="ids are 32-bit, at most 4294967295"):
        select({1: "a"}, text)


def test_clip_and_intersect_agree_with_python_sets() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        wanted = IdSet.from_ids(rng.sample(range(300), rng.randint(0, 60)))
        step = rng.randint(1, 9)
        wanted = wanted.union(parse_id_set(f"{rng.randint(0, 50)}-{rng.randint(200, 290)}:{step}"))
        existing = IdSet.from_ids(rng.sample(range(300), rng.randint(0, 90)))
        lo, hi = sorted((rng.randint(0, 310), rng.randint(0, 310)))
        assert set(clip(wanted, lo, hi)) == {i for i in wanted if lo <= i <= hi}
        found, missing = intersect(wanted, existing)
        assert set(found) == set(wanted) & set(existing)
        assert set(missing) == set(wanted) - set(existing)
        assert parse_id_set(id_text(wanted)) == wanted
