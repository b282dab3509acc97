"""Compact sets of task/job/worker ids, the `1-10,20` / `0-100:2` syntax, and CLI selectors.

An `IdSet` keeps a canonical tuple of runs `(start, stop, step)` (Python `range` arguments):
maximal contiguous blocks are stored as step-1 runs, and a series of isolated ids with a constant
gap (what `0-1000000:2` produces) as one stepped run. The canonical form is a pure function of
the members, so equality and hashing compare runs, and `0-999999` or `0-1000000:2` take O(1)
memory. Intersection is arithmetic on runs (O(number of runs)); union and difference only
expand runs whose spans overlap runs of the other operand and that no arithmetic rule covers.

Ids are 32-bit, as in HyperQueue: the parser refuses anything above `MAX_ID`, so no user-given
range can grow past what a 32-bit id space holds.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import attrs
else:  # the same classes, made without importing attrs (see lightattrs)
    from hqpy.common import lightattrs as attrs

Run = tuple[int, int, int]
"""`(start, stop, step)`: the ids of `range(start, stop, step)`; `stop` is always last + 1."""

MAX_ID = 2**32 - 1
"""The largest job, task or worker id (HyperQueue's ids are `u32`)."""


class _Builder:
    """Turns ascending, non-overlapping pieces into canonical runs (merging adjacent blocks)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        # Pending isolated ids forming an arithmetic series: first, last, gap, count.
        self._first = 0
        self._last = 0
        self._gap = 0
        self._count = 0
        # Pending contiguous block (only when _count == 0).
        self._bstart = 0
        self._bstop = 0
        self._has_block = False

    def _flush_singles(self) -> None:
        if self._count == 1:
            self.runs.append((self._first, self._first + 1, 1))
        elif self._count > 1:
            self.runs.append((self._first, self._last + 1, self._gap))
        self._count = 0

    def _flush_block(self) -> None:
        if self._has_block:
            self.runs.append((self._bstart, self._bstop, 1))
            self._has_block = False

    def _pop_last_single(self) -> int:
        value = self._last
        if self._count == 1:
            self._count = 0
        elif self._count == 2:
            self._count = 1
            self._last = self._first
        else:
            self._count -= 1
            self._last -= self._gap
        return value

    def _end(self) -> int | None:
        """One past the last id added so far (None when nothing pending)."""
        if self._has_block:
            return self._bstop
        if self._count:
            return self._last + 1
        return None

    def add_block(self, start: int, stop: int) -> None:
        if stop <= start:
            return
        end = self._end()
        if end is not None and start < end:
            raise AssertionError("pieces must be ascending and non-overlapping")
        if self._has_block:
            if start == self._bstop:
                self._bstop = stop
                return
            if stop - start > 1:
                self._flush_block()
                self._bstart, self._bstop, self._has_block = start, stop, True
                return
            self._flush_block()
            self._add_single(start)
            return
        if self._count and start == self._last + 1:
            start = self._pop_last_single()
        if stop - start == 1:
            self._add_single(start)
        else:
            self._flush_singles()
            self._bstart, self._bstop, self._has_block = start, stop, True

    def _add_single(self, value: int) -> None:
        if self._count == 0:
            self._first = self._last = value
            self._count = 1
        elif self._count == 1:
            self._gap = value - self._last
            self._last = value
            self._count = 2
        elif value - self._last == self._gap:
            self._last = value
            self._count += 1
        else:
            self._flush_singles()
            self._first = self._last = value
            self._count = 1

    def add_run(self, start: int, stop: int, step: int) -> None:
        if step == 1:
            self.add_block(start, stop)
            return
        ids = range(start, stop, step)
        # After three ids the pending series always ends at ids[2] with gap `step` (only the
        # first id can merge into a preceding block), so the rest extends it in O(1).
        for value in ids[:3]:
            self.add_block(value, value + 1)
        if len(ids) > 3:
            self._last = ids[-1]
            self._count += len(ids) - 3

    def finish(self) -> tuple[Run, ...]:
        self._flush_block()
        self._flush_singles()
        return tuple(self.runs)


def _last(run: Run) -> int:
    start, stop, step = run
    return start + (len(range(start, stop, step)) - 1) * step


def _blocks_of(runs: Iterable[Run]) -> Iterator[tuple[int, int]]:
    for start, stop, step in runs:
        if step == 1:
            yield (start, stop)
        else:
            for value in range(start, stop, step):
                yield (value, value + 1)


def _merge_blocks(blocks: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted blocks in, overlapping and adjacent ones merged."""
    merged: list[tuple[int, int]] = []
    for start, stop in blocks:
        if merged and start <= merged[-1][1]:
            if stop > merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def _intersect_blocks(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> Iterator[tuple[int, int]]:
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        stop = min(a[i][1], b[j][1])
        if start < stop:
            yield (start, stop)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1


def _subtract_blocks(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> Iterator[tuple[int, int]]:
    j = 0
    for start, stop in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < stop:
            if b[k][0] > cur:
                yield (cur, b[k][0])
            cur = max(cur, b[k][1])
            k += 1
        if cur < stop:
            yield (cur, stop)


def _intersect_runs(a: Run, b: Run) -> Run | None:
    """The ids in both runs, as one run (two arithmetic series meet in an arithmetic series)."""
    a_start, a_stop, a_step = a
    b_start, b_stop, b_step = b
    lo = max(a_start, b_start)
    hi = min(_last(a), _last(b))
    if lo > hi:
        return None
    g = math.gcd(a_step, b_step)
    if (b_start - a_start) % g:
        return None
    step = a_step // g * b_step
    # Solve x = a_start (mod a_step), x = b_start (mod b_step) (Chinese remainder theorem).
    k = ((b_start - a_start) // g * pow(a_step // g, -1, b_step // g)) % (b_step // g)
    first = a_start + k * a_step
    if first < lo:
        first += -(-(lo - first) // step) * step
    if first > hi:
        return None
    last = first + (hi - first) // step * step
    return (first, last + 1, step if last > first else 1)


def _subtract_run(a: Run, b: Run) -> list[Run] | None:
    """`a` minus `b` as at most two runs, or None when that needs expanding (unaligned steps)."""
    common = _intersect_runs(a, b)
    if common is None:
        return [a]
    c_first, c_stop, _ = common
    c_last = _last(common)
    a_start, a_stop, a_step = a
    b_start, _, b_step = b
    pieces: list[Run] = []
    if c_first > a_start:
        pieces.append((a_start, c_first, a_step))
    aligned = b_step % a_step == 0 and (b_start - a_start) % a_step == 0
    if aligned and b_step == 2 * a_step and c_first != c_last:
        # `b` takes every other id of `a` (`0-100` minus `0-100:2`): the rest is one run.
        pieces.append((c_first + a_step, c_last, b_step))
    elif not (b_step == 1 or (aligned and b_step == a_step)) and c_first != c_last:
        return None  # what is left between the common ids is not one run
    if c_last < _last(a):
        pieces.append((c_last + a_step, a_stop, a_step))
    return pieces


class _TooManyIds(Exception):
    """An expansion would pass the caller's limit."""


def _subtract_expanded(a: Run, b: Run, limit: int | None) -> list[Run]:
    """`a` minus `b` for unaligned steps: only the ids of `a` inside `b`'s span are expanded."""
    b_first, b_last = b[0], _last(b)
    a_start, a_stop, a_step = a
    inside = range(a_start, a_stop, a_step)
    lo = bisect.bisect_left(inside, b_first)
    hi = bisect.bisect_right(inside, b_last)
    if limit is not None and hi - lo > limit:
        raise _TooManyIds
    parts: list[Run] = []
    if lo > 0:
        parts.append((a_start, inside[lo - 1] + 1, a_step))
    b_ids = range(*b)
    parts.extend((x, x + 1, 1) for x in inside[lo:hi] if x not in b_ids)
    if hi < len(inside):
        parts.append((inside[hi], a_stop, a_step))
    return parts


_Op = Literal["union", "intersection", "difference"]


class IdSet:
    """An immutable set of non-negative ints stored as canonical runs (see the module doc)."""

    __slots__ = ("_runs", "_starts", "_hash")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        """`IdSet([1, 2, 5])`; the same as `IdSet.from_ids`."""
        self._runs: tuple[Run, ...] = IdSet.from_ids(ids)._runs
        self._starts: list[int] | None = None
        self._hash: int | None = None

    @classmethod
    def _of_runs(cls, runs: tuple[Run, ...]) -> IdSet:
        """Wraps runs that are already canonical (built by `_Builder`)."""
        result = cls.__new__(cls)
        result._runs = runs
        result._starts = None
        result._hash = None
        return result

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def _from_sorted_pieces(cls, runs: Iterable[Run]) -> IdSet:
        builder = _Builder()
        for start, stop, step in runs:
            builder.add_run(start, stop, step)
        return cls._of_runs(builder.finish())

    @classmethod
    def from_ids(cls, ids: Iterable[int]) -> IdSet:
        if isinstance(ids, IdSet):
            return ids
        if isinstance(ids, range) and ids.step > 0:
            return cls.from_range(ids[0], ids[-1], ids.step) if ids else cls._of_runs(())
        values = sorted(set(ids))
        if values and values[0] < 0:
            raise ValueError(f"invalid id {values[0]}: ids must be non-negative")
        builder = _Builder()
        i = 0
        n = len(values)
        while i < n:
            # Find the end of the consecutive run starting at values[i] without per-id calls.
            j = i + 1
            while j < n and values[j] == values[j - 1] + 1:
                j += 1
            builder.add_block(values[i], values[j - 1] + 1)
            i = j
        return cls._of_runs(builder.finish())

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[int, int]]) -> IdSet:
        """From inclusive `(first, last)` pairs, in any order, overlaps allowed."""
        blocks: list[tuple[int, int]] = []
        for first, last in ranges:
            if first < 0 or last < first:
                raise ValueError(f"invalid id range ({first}, {last}): expected 0 <= first <= last")
            blocks.append((first, last + 1))
        blocks.sort()
        builder = _Builder()
        for start, stop in _merge_blocks(blocks):
            builder.add_block(start, stop)
        return cls._of_runs(builder.finish())

    @classmethod
    def from_range(cls, first: int, last: int, step: int = 1) -> IdSet:
        """All ids `first, first+step, ...` up to `last` inclusive."""
        if first < 0 or last < first or step < 1:
            raise ValueError(
                f"invalid id range {first}-{last}:{step}: expected 0 <= first <= last, step >= 1"
            )
        return cls._from_sorted_pieces([(first, last + 1, step)])

    # --- queries ------------------------------------------------------------------------------

    def runs(self) -> tuple[Run, ...]:
        """The canonical `(start, stop, step)` runs; cheap even for huge stepped sets."""
        return self._runs

    def __len__(self) -> int:
        return sum(len(range(*run)) for run in self._runs)

    def __bool__(self) -> bool:
        return bool(self._runs)

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(range(*run) for run in self._runs)

    def __reversed__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(reversed(range(*run)) for run in reversed(self._runs))

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        if self._starts is None:
            self._starts = [run[0] for run in self._runs]
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value in range(*self._runs[i])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdSet):
            return self._runs == other._runs
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._runs)
        return self._hash

    def __repr__(self) -> str:
        return f"IdSet({format_id_set(self)!r})"

    def __str__(self) -> str:
        return format_id_set(self)

    def min(self) -> int:
        if not self._runs:
            raise ValueError("min() of an empty IdSet")
        return self._runs[0][0]

    def max(self) -> int:
        if not self._runs:
            raise ValueError("max() of an empty IdSet")
        return _last(self._runs[-1])

    def iter_ranges(self) -> Iterator[tuple[int, int]]:
        """Maximal contiguous runs as inclusive `(first, last)`, lazily."""
        for start, stop in _blocks_of(self._runs):
            yield (start, stop - 1)

    def ranges(self) -> list[tuple[int, int]]:
        """Maximal contiguous runs as inclusive `(first, last)` (a stepped run expands)."""
        return list(self.iter_ranges())

    # --- set algebra --------------------------------------------------------------------------

    def _combine(self, other: IdSet, op: _Op) -> IdSet:
        """Walks both run lists; only clusters of runs whose spans overlap get expanded."""
        tagged: Iterator[tuple[Run, int]] = heapq.merge(
            ((r, 0) for r in self._runs), ((r, 1) for r in other._runs), key=lambda t: t[0][0]
        )
        builder = _Builder()
        cluster: list[tuple[Run, int]] = []
        cluster_last = -1

        def emit() -> None:
            owners = {owner for _, owner in cluster}
            if len(owners) == 1:
                (owner,) = owners
                keep = op == "union" or (op == "difference" and owner == 0)
                if keep:
                    for run, _ in cluster:
                        builder.add_run(*run)
                return
            a = [b for run, owner in cluster if owner == 0 for b in _blocks_of([run])]
            b = [b for run, owner in cluster if owner == 1 for b in _blocks_of([run])]
            if op == "union":
                result: Iterable[tuple[int, int]] = _merge_blocks(sorted(a + b))
            elif op == "intersection":
                result = _intersect_blocks(a, b)
            else:
                result = _subtract_blocks(a, b)
            for start, stop in result:
                builder.add_block(start, stop)

        for run, owner in tagged:
            if cluster and run[0] > cluster_last:
                emit()
                cluster = []
            cluster.append((run, owner))
            cluster_last = max(cluster_last, _last(run))
        if cluster:
            emit()
        return IdSet._of_runs(builder.finish())

    def union(self, other: Iterable[int]) -> IdSet:
        o = IdSet.from_ids(other)
        if not o:
            return self
        if not self:
            return o
        return self._combine(o, "union")

    def intersection(self, other: Iterable[int]) -> IdSet:
        """O(runs of both): runs have disjoint ascending spans, so a two-pointer walk suffices."""
        o = IdSet.from_ids(other)
        if not self or not o:
            return IdSet()
        a, b = self._runs, o._runs
        builder = _Builder()
        i = j = 0
        while i < len(a) and j < len(b):
            common = _intersect_runs(a[i], b[j])
            if common is not None:
                builder.add_run(*common)
            if _last(a[i]) < _last(b[j]):
                i += 1
            else:
                j += 1
        return IdSet._of_runs(builder.finish())

    def difference(self, other: Iterable[int]) -> IdSet:
        """Arithmetic per pair of overlapping runs; only unaligned stepped runs get expanded."""
        return self._difference(IdSet.from_ids(other), None)

    def _difference(self, o: IdSet, limit: int | None) -> IdSet:
        if not self or not o:
            return self
        b = o._runs
        b_lasts = [_last(run) for run in b]
        builder = _Builder()
        for run in self._runs:
            # The runs of `o` whose spans meet this run's span.
            j = bisect.bisect_left(b_lasts, run[0])
            piece: Run | None = run
            while piece is not None and j < len(b) and b[j][0] <= _last(piece):
                # `b[j]` is the first run of `o` that can meet `piece`: what comes before its span
                # is final, what comes after it is checked against the next runs of `o`.
                cut = _subtract_run(piece, b[j])
                if cut is None:
                    cut = _subtract_expanded(piece, b[j], limit)
                piece = None
                for part in cut:
                    if _last(part) <= _last(b[j]):
                        builder.add_run(*part)
                    else:
                        piece = part
                j += 1
            if piece is not None:
                builder.add_run(*piece)
        return IdSet._of_runs(builder.finish())

    __or__ = union
    __and__ = intersection
    __sub__ = difference


_NUM = r"[0-9](?:_?[0-9])*"
# Compiled by `re`'s cache on first use, not at import (every `hq` call imports this module).
_ITEM_RE = rf"(?a)\s*(?P<a>{_NUM})(?:\s*-\s*(?P<b>{_NUM})(?:\s*:\s*(?P<step>{_NUM}))?)?\s*"


_NEGATIVE_RE = rf"(?a)(?:^|,|:)\s*-\s*({_NUM})"
_SHOWN_LIMIT = 60


def _shown(text: str) -> str:
    """`repr` of user text, cut short: a message must stay one readable line."""
    if len(text) > _SHOWN_LIMIT:
        return repr(text[:_SHOWN_LIMIT]) + "..."
    return repr(text)


def _shown_number(digits: str) -> str:
    digits = digits.replace("_", "")
    if len(digits) > 30:
        return f"{digits[:12]}...({len(digits)} digits)"
    return digits


class IdRangeError(ValueError):
    """An id outside 0..MAX_ID: shown as it is, whatever the caller was parsing."""


def _id_value(digits: str, text: str) -> int:
    """One id of the text; refuses anything over 32 bits before converting a huge number."""
    plain = digits.replace("_", "").lstrip("0") or "0"
    if len(plain) > len(str(MAX_ID)) or int(plain) > MAX_ID:
        raise IdRangeError(
            f"invalid id set {_shown(text)}: id {_shown_number(plain)} is out of range; "
            f"ids are 32-bit, at most {MAX_ID}"
        )
    return int(plain)


MERGE_LIMIT = 1 << 20
"""How many ids of overlapping stepped items the parser merges one by one before it refuses."""


def _overlapping_stepped_ids(runs: list[Run]) -> int:
    """How many ids of stepped runs lie in clusters of runs whose spans overlap."""
    total = 0
    cluster: list[Run] = []
    cluster_last = -1
    for run in [*sorted(runs), (MAX_ID + 2, MAX_ID + 3, 1)]:
        if cluster and run[0] > cluster_last:
            if len(cluster) > 1:
                total += sum(len(range(*r)) for r in cluster if r[2] > 1)
            cluster = []
        cluster.append(run)
        cluster_last = max(cluster_last, _last(run))
    return total


def _union_of_items(runs: list[Run], text: str) -> IdSet:
    """Items whose spans overlap: blocks merge as ranges, stepped items are cut by them
    arithmetically, and only what still overlaps is merged id by id (bounded by MERGE_LIMIT)."""
    blocks = IdSet._of_runs(())
    block_list = [(start, stop) for start, stop, step in runs if step == 1]
    builder = _Builder()
    for start, stop in _merge_blocks(block_list):
        builder.add_block(start, stop)
    blocks = IdSet._of_runs(builder.finish())
    rest = [
        piece
        for start, stop, step in runs
        if step > 1
        for piece in IdSet._from_sorted_pieces([(start, stop, step)]).difference(blocks).runs()
    ]
    result = blocks
    merged = 0
    for piece in rest:
        try:
            new = IdSet._of_runs((piece,))._difference(result, MERGE_LIMIT)
        except _TooManyIds:
            new = None
        if new is not None:
            merged += _overlapping_stepped_ids(list(result.runs()) + list(new.runs()))
        if new is None or merged > MERGE_LIMIT:
            raise ValueError(
                f"invalid id set {_shown(text)}: overlapping stepped ranges cover too many ids "
                "to merge; write them as ranges that do not overlap"
            )
        result = result.union(new)
    return result


def parse_id_set(text: str, *, allow_overlap: bool = True) -> IdSet:
    """Parses `1-10,20`, `0-100:2`, `1-1000_000` (end inclusive, as in `hq submit --array`).

    `allow_overlap=False` rejects overlapping items, as `hq submit --array` does.
    """
    items = text.split(",")
    runs: list[Run] = []
    for item in items:
        m = re.fullmatch(_ITEM_RE, item)
        if not m:
            negative = re.search(_NEGATIVE_RE, item)
            if negative:
                raise IdRangeError(
                    f"invalid id set {_shown(text)}: id -{_shown_number(negative[1])} is negative; "
                    "ids are 0 or more"
                )
            raise ValueError(
                f"invalid id set {_shown(text)}: bad item {_shown(item.strip())}, "
                "expected comma-separated N, A-B or A-B:STEP (e.g. 1-10,20 or 0-100:2)"
            )
        first = _id_value(m["a"], text)
        last = _id_value(m["b"], text) if m["b"] is not None else first
        step = _id_value(m["step"], text) if m["step"] is not None else 1
        if last < first:
            raise ValueError(
                f"invalid id set {_shown(text)}: range {_shown(item.strip())} ends before it starts"
            )
        if m["step"] is not None and not 0 < step <= last - first:
            raise ValueError(
                f"invalid id set {_shown(text)}: the step in {_shown(item.strip())} must be "
                "between 1 and end - start"
            )
        runs.append((first, last + 1, step))
    runs.sort()
    if all(_last(a) < b[0] for a, b in itertools.pairwise(runs)):
        return IdSet._from_sorted_pieces(runs)
    result = _union_of_items(runs, text)
    if not allow_overlap and len(result) != sum(len(range(*run)) for run in runs):
        raise ValueError(f"invalid id set {_shown(text)}: ranges overlap")
    return result


def format_id_set(ids: Iterable[int]) -> str:
    """`2,7,9,20-30`: ascending, consecutive runs compressed, empty set -> ``."""
    id_set = ids if isinstance(ids, IdSet) else IdSet.from_ids(ids)
    return ",".join(
        str(first) if first == last else f"{first}-{last}" for first, last in id_set.iter_ranges()
    )


@attrs.frozen
class Selector:
    """What a CLI command acts on: `all`, the `last` one, or explicit ids."""

    kind: Literal["all", "last", "ids"]
    ids: IdSet | None = None


def parse_selector(text: str) -> Selector:
    """`all`, `last` or an id set (`1-3,7`)."""
    stripped = text.strip()
    if stripped == "all":
        return Selector("all")
    if stripped == "last":
        return Selector("last")
    try:
        return Selector("ids", parse_id_set(stripped))
    except IdRangeError:
        raise
    except ValueError as e:
        raise ValueError(
            f"invalid selector {text!r}: expected all, last or ids such as 1, 1-3 or 1,5-7"
        ) from e
