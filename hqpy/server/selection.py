"""Which jobs, workers or tasks a request names, worked out on id ranges as ranges.

A selector such as `1-99999999999` never walks its range id by id: it is intersected with the
ids that exist (a set of runs), and the ids that do not exist stay a range too, so that a reply
can say `Jobs 100-50000000 not found` in one line.
"""

from __future__ import annotations

from typing import TypeVar

from hqpy.common.errors import RequestError
from hqpy.common.idset import MAX_ID, IdSet, parse_id_set, parse_selector
from hqpy.common.states import TaskState

T = TypeVar("T")

ID_LIMIT = MAX_ID + 1
"""Ids are 32-bit, as in HyperQueue (the id parser refuses larger ones)."""


def parse_ids(text: str) -> IdSet:
    """An id set from a request; RequestError for bad text or ids of 2^32 or more."""
    try:
        return parse_id_set(text)
    except ValueError as e:
        raise RequestError(str(e)) from None


def check_id_limit(ids: IdSet, text: str) -> None:
    """For ids the server computes (an open job's next ids): they must stay 32-bit too."""
    for _start, stop, _step in ids.runs():
        if stop > ID_LIMIT:
            raise RequestError(
                f"invalid id set {text!r}: ids must be below {ID_LIMIT} (32-bit, as in HyperQueue)"
            )


def select(items: dict[int, T], selector: str) -> tuple[list[T], IdSet]:
    """The items a selector names (`3`, `1-4`, `last`, `all`), in id order, and the named ids
    that do not exist. Costs O(items + runs of the selector), whatever the range's length."""
    try:
        sel = parse_selector(selector)
    except ValueError as e:
        raise RequestError(str(e)) from None
    if sel.kind == "all":
        return list(items.values()), IdSet()
    if sel.kind == "last":
        return ([items[max(items)]] if items else []), IdSet()
    assert sel.ids is not None
    wanted = sel.ids
    if not items:
        return [], wanted
    existing = IdSet.from_ids(items)
    found, missing = intersect(wanted, existing)
    return [items[i] for i in found], missing


def intersect(wanted: IdSet, existing: IdSet) -> tuple[IdSet, IdSet]:
    """`(wanted & existing, wanted - existing)`, expanding no more of `wanted` than the span
    of `existing` (`0-4000000000:2` against ids 0-99 costs 50 ids, not two billion)."""
    if not existing:
        return IdSet(), wanted
    lo, hi = existing.min(), existing.max()
    inside = clip(wanted, lo, hi)
    outside = clip(wanted, 0, lo - 1).union(clip(wanted, hi + 1, ID_LIMIT - 1))
    return inside.intersection(existing), outside.union(inside.difference(existing))


def clip(ids: IdSet, lo: int, hi: int) -> IdSet:
    """The ids in `lo..hi`, computed on runs (never by walking them)."""
    if hi < lo:
        return IdSet()
    items = []
    for start, stop, step in ids.runs():
        last = stop - 1
        if last < lo or start > hi:
            continue
        first = start if start >= lo else start + -(-(lo - start) // step) * step
        end = min(last, hi)
        end -= (end - first) % step
        if first > end:
            continue
        items.append(str(first) if first == end else f"{first}-{end}:{step}")
    return parse_id_set(",".join(items)) if items else IdSet()


def parse_states(names: tuple[str, ...]) -> set[TaskState] | None:
    """Task states by their names (`--task-status failed,canceled`); None: every state."""
    if not names:
        return None
    try:
        return {TaskState.parse(name) for name in names}
    except ValueError as e:
        raise RequestError(str(e)) from None


def id_text(ids: IdSet) -> str:
    """`2,7-9,20-100:2`: the ids in `parse_id_set` syntax, one item per run, so that its length
    follows the runs, never the count of ids (`0-4000000000:2` stays short)."""
    items = []
    for start, stop, step in ids.runs():
        last = stop - 1
        if start == last:
            items.append(str(start))
        elif step == 1 or start + step == last:
            items.append(f"{start}-{last}" if step == 1 else f"{start},{last}")
        else:
            items.append(f"{start}-{last}:{step}")
    return ",".join(items)


def shift(ids: IdSet, offset: int) -> IdSet:
    """Every id plus `offset`, on runs."""
    if offset == 0 or not ids:
        return ids
    items = []
    for start, stop, step in ids.runs():
        first, last = start + offset, stop - 1 + offset
        items.append(str(first) if first == last else f"{first}-{last}:{step}")
    return parse_id_set(",".join(items))
