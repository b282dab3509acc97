"""Worker resources (what a worker has) and resource requests (what a task needs).

Amounts are integers in units of 1/10,000 (`FRACTIONS`), as in HyperQueue, so `--cpus 0.5`
is 5,000 and comparisons never suffer from float rounding.
"""

from __future__ import annotations

import bisect
import collections
import enum
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import attrs
else:  # the same classes, made without importing attrs (see lightattrs)
    from hqpy.common import lightattrs as attrs

from hqpy.common.jsontypes import JsonOut, JsonOutObject

FRACTIONS = 10_000
ALL = -1
"""The amount of a request for all of a resource (`--resource gpus=all`)."""


class ResourceKind(enum.StrEnum):
    RANGE = "range"
    SUM = "sum"
    LIST = "list"
    GROUPS = "groups"


@attrs.frozen
class ResourceDescriptorItem:
    """One resource pool of a worker, as `--cpus` or `--resource name=...` described it."""

    name: str
    kind: ResourceKind
    start: int = 0
    end: int = 0
    size: int = 0
    values: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()

    def indices(self) -> tuple[str, ...]:
        """The indices of an indexed pool (empty for a `sum` pool)."""
        if self.kind is ResourceKind.RANGE:
            return tuple(str(i) for i in range(self.start, self.end + 1))
        if self.kind is ResourceKind.LIST:
            return self.values
        if self.kind is ResourceKind.GROUPS:
            return tuple(v for g in self.groups for v in g)
        return ()

    def count(self) -> int:
        """How many indices (or, for a `sum` pool, units) it has, without listing them."""
        if self.kind is ResourceKind.SUM:
            return self.size
        if self.kind is ResourceKind.RANGE:
            return max(0, self.end - self.start + 1)
        if self.kind is ResourceKind.LIST:
            return len(self.values)
        return sum(len(g) for g in self.groups)

    def capacity(self) -> int:
        """The size of the pool in 1/10,000 units."""
        return self.count() * FRACTIONS


class AllocationPolicy(enum.StrEnum):
    COMPACT = "compact"
    FORCE_COMPACT = "compact!"
    TIGHT = "tight"
    FORCE_TIGHT = "tight!"
    SCATTER = "scatter"


@attrs.frozen
class ResourceAmountRequest:
    """A request for an amount of one resource (`amount` in 1/10,000, or `ALL`)."""

    resource: str
    amount: int
    policy: AllocationPolicy = AllocationPolicy.COMPACT


@attrs.frozen
class ResourceRequest:
    """Everything one task needs: amounts of resources, nodes and time left on the worker."""

    entries: tuple[ResourceAmountRequest, ...] = ()
    n_nodes: int = 0
    min_time: float = 0.0


# --- parsing ----------------------------------------------------------------------------------

# Patterns are kept as text and compiled by `re`'s own cache on first use: compiling them all at
# import cost every `hq` call (which imports this module for the messages) about a millisecond.
_NAME_RE = r"(?a)[A-Za-z][A-Za-z0-9/]*"
_INT = r"[0-9](?:_?[0-9])*"
_AMOUNT_RE = rf"(?a)({_INT})(?:\.([0-9]+))?"
_REQUEST_RE = rf"(?a)\s*({_INT}(?:\.[0-9]+)?)\s*([A-Za-z!]+)?\s*"
_PLAIN_INT_RE = rf"(?a)\s*({_INT})\s*"
_X_RE = rf"(?a)\s*({_INT})\s*x\s*({_INT})\s*"
_RANGE_RE = rf"(?a)\s*range\s*\(\s*({_INT})\s*-\s*({_INT})\s*\)\s*"
_SUM_RE = rf"(?a)\s*sum\s*\(\s*({_INT})\s*\)\s*"
_GROUP_RE = r"\s*\[([^\[\]]*)\]\s*"
_VALUE_RE = r"[^\s,\[\]()\"']+"

_FORCED = (AllocationPolicy.FORCE_COMPACT, AllocationPolicy.FORCE_TIGHT)
_POLICY_JSON = {
    AllocationPolicy.COMPACT: "Compact",
    AllocationPolicy.FORCE_COMPACT: "ForceCompact",
    AllocationPolicy.TIGHT: "Tight",
    AllocationPolicy.FORCE_TIGHT: "ForceTight",
    AllocationPolicy.SCATTER: "Scatter",
}


def parse_amount(text: str) -> int:
    """`2` -> 20000, `0.5` -> 5000, `all` -> `ALL` (amounts are in 1/10,000 units)."""
    stripped = text.strip()
    if stripped == "all":
        return ALL
    m = re.fullmatch(_AMOUNT_RE, stripped)
    if not m:
        raise ValueError(
            f"invalid resource amount {text!r}: expected a non-negative number with at most "
            "4 decimal places (e.g. 2 or 0.5) or all"
        )
    fraction = (m[2] or "").rstrip("0")
    if len(fraction) > 4:
        raise ValueError(f"invalid resource amount {text!r}: at most 4 decimal places are allowed")
    return int(m[1]) * FRACTIONS + int(fraction.ljust(4, "0"))


def parse_request_entry(name: str, text: str) -> ResourceAmountRequest:
    """`2`, `4 compact!`, `2 scatter`, `0.25 tight` or `all` for resource `name`."""
    if text.strip() == "all":
        return ResourceAmountRequest(name, ALL)
    m = re.fullmatch(_REQUEST_RE, text)
    if not m:
        raise ValueError(
            f"invalid request {text!r} for resource {name!r}: expected an amount with an "
            "optional policy (e.g. 2, 4 compact!, 0.5 scatter) or all"
        )
    amount = parse_amount(m[1])
    if amount == 0:
        raise ValueError(
            f"invalid request {text!r} for resource {name!r}: zero resources cannot be requested"
        )
    policy = AllocationPolicy.COMPACT
    if m[2] is not None:
        try:
            policy = AllocationPolicy(m[2])
        except ValueError:
            choices = ", ".join(p.value for p in AllocationPolicy)
            raise ValueError(
                f"invalid policy {m[2]!r} for resource {name!r}: expected one of {choices}"
            ) from None
    if policy in _FORCED and amount % FRACTIONS:
        raise ValueError(
            f"invalid request {text!r} for resource {name!r}: policy {policy.value} cannot be "
            "used with a fractional amount"
        )
    return ResourceAmountRequest(name, amount, policy)


def _check_name(name: str, text: str) -> None:
    if not re.fullmatch(_NAME_RE, name):
        raise ValueError(
            f"invalid resource name {name!r} in {text!r}: expected ASCII letters, digits and "
            "'/', starting with a letter (e.g. gpus/nvidia)"
        )


def parse_resource_arg(text: str) -> tuple[str, str]:
    """Splits `name=definition` as given to `--resource`."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep:
        raise ValueError(f"invalid resource {text!r}: expected NAME=VALUE (e.g. gpus=2)")
    _check_name(name, text)
    if not value:
        raise ValueError(f"invalid resource {text!r}: missing value after '=' (e.g. gpus=2)")
    return name, value


def _int(text: str) -> int:
    return int(text.replace("_", ""))


def _parse_values(name: str, text: str, inner: str) -> tuple[str, ...]:
    values = []
    for raw in inner.split(","):
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not re.fullmatch(_VALUE_RE, value):
            raise ValueError(
                f"invalid resource {name!r} definition {text!r}: bad list item {raw.strip()!r}, "
                "expected e.g. [0,1,2] or [[0,1],[2,3]] with non-empty items"
            )
        values.append(value)
    return tuple(values)


def _descriptor_error(name: str, text: str, reason: str) -> ValueError:
    return ValueError(
        f"invalid resource {name!r} definition {text!r}: {reason}; expected N, NxM, [a,b,...], "
        "[[a,b],[c]], range(A-B) or sum(N)"
    )


def parse_descriptor(name: str, text: str) -> ResourceDescriptorItem:
    """A worker's pool from `--cpus`/`--resource`: `4`, `4x5`, `[1,2]`, `[[0,1],[2]]`,
    `range(1-4)`, `sum(100)`."""
    if m := re.fullmatch(_PLAIN_INT_RE, text):
        count = _int(m[1])
        if count < 1:
            raise _descriptor_error(name, text, "the count must be at least 1")
        return ResourceDescriptorItem(name, ResourceKind.RANGE, start=0, end=count - 1)
    if m := re.fullmatch(_X_RE, text):
        n_groups, size = _int(m[1]), _int(m[2])
        if n_groups < 1 or size < 1:
            raise _descriptor_error(name, text, "group count and size must be at least 1")
        if n_groups == 1:
            return ResourceDescriptorItem(name, ResourceKind.RANGE, start=0, end=size - 1)
        groups = tuple(
            tuple(str(i) for i in range(g * size, (g + 1) * size)) for g in range(n_groups)
        )
        return ResourceDescriptorItem(name, ResourceKind.GROUPS, groups=groups)
    if m := re.fullmatch(_RANGE_RE, text):
        start, end = _int(m[1]), _int(m[2])
        if start > end:
            raise _descriptor_error(name, text, "the range start must not exceed its end")
        return ResourceDescriptorItem(name, ResourceKind.RANGE, start=start, end=end)
    if m := re.fullmatch(_SUM_RE, text):
        if name == "cpus":
            raise ValueError(
                f"invalid cpus definition {text!r}: cpus cannot be a sum resource, "
                "use e.g. 4, 2x4 or [0,1,2,3]"
            )
        return ResourceDescriptorItem(name, ResourceKind.SUM, size=_int(m[1]))
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        raise _descriptor_error(name, text, "unknown form")
    inner = stripped[1:-1].strip()
    if not inner:
        raise _descriptor_error(name, text, "a list has to contain at least one item")
    if not inner.startswith("["):
        values = _parse_values(name, text, inner)
        if len(set(values)) != len(values):
            raise _descriptor_error(name, text, "list items have to be unique")
        return ResourceDescriptorItem(name, ResourceKind.LIST, values=values)
    groups_list: list[tuple[str, ...]] = []
    pos = 0
    while True:
        gm = re.compile(_GROUP_RE).match(inner, pos)
        if not gm:
            raise _descriptor_error(name, text, "malformed group list")
        if not gm[1].strip():
            raise _descriptor_error(name, text, "a group has to contain at least one item")
        groups_list.append(_parse_values(name, text, gm[1]))
        pos = gm.end()
        if pos == len(inner):
            break
        if inner[pos] != ",":
            raise _descriptor_error(name, text, "groups must be separated by ','")
        pos += 1
    flat = [v for g in groups_list for v in g]
    if len(set(flat)) != len(flat):
        raise _descriptor_error(name, text, "group items have to be unique")
    if len(groups_list) == 1:
        # As in HQ, one group is just a list.
        return ResourceDescriptorItem(name, ResourceKind.LIST, values=groups_list[0])
    return ResourceDescriptorItem(name, ResourceKind.GROUPS, groups=tuple(groups_list))


# --- formatting -------------------------------------------------------------------------------


def format_amount(amount: int) -> str:
    """`20000` -> `2`, `5000` -> `0.5`, `ALL` -> `all` (no needless decimals, as HQ prints)."""
    if amount == ALL:
        return "all"
    units, fractions = divmod(amount, FRACTIONS)
    if not fractions:
        return str(units)
    return f"{units}.{fractions:04d}".rstrip("0")


def _descriptor_amount(item: ResourceDescriptorItem) -> str:
    if item.kind is ResourceKind.RANGE:
        return str(item.end - item.start + 1)
    if item.kind is ResourceKind.LIST:
        return str(len(item.values))
    if item.kind is ResourceKind.SUM:
        return str(item.size)
    if len(item.groups) == 1:
        return str(len(item.groups[0]))
    sizes = collections.Counter(len(g) for g in item.groups)
    return " ".join(f"{sizes[size]}x{size}" for size in sorted(sizes))


def format_descriptor_short(item: ResourceDescriptorItem) -> str:
    """`cpus 10`, `cpus 4x5`, `cpus 1x1 1x2 1x3` (the `worker list` Resources cell)."""
    return f"{item.name} {_descriptor_amount(item)}"


def format_descriptor_long(item: ResourceDescriptorItem) -> str:
    """`cpus: 10` (one line of the `worker info` Resources cell)."""
    return f"{item.name}: {_descriptor_amount(item)}"


def format_request_entry(entry: ResourceAmountRequest) -> str:
    if entry.amount == ALL:
        return f"{entry.resource}: all"
    return f"{entry.resource}: {format_amount(entry.amount)} {entry.policy.value}"


def format_request(req: ResourceRequest) -> str:
    """One `name: amount policy` line per entry, sorted by name (`job info` Resources)."""
    entries = sorted(req.entries, key=lambda e: e.resource)
    return "\n".join(format_request_entry(e) for e in entries)


def _cpus_last(entries: Sequence[ResourceAmountRequest]) -> list[ResourceAmountRequest]:
    return [e for e in entries if e.resource != "cpus"] + [
        e for e in entries if e.resource == "cpus"
    ]


def request_to_json(req: ResourceRequest) -> JsonOutObject:
    """HQ's JSON shape for a request (`{"Compact": 20000}`, `"All"`; cpus last)."""
    resources: list[JsonOutObject] = []
    for e in _cpus_last(req.entries):
        request: JsonOut = "All" if e.amount == ALL else {_POLICY_JSON[e.policy]: e.amount}
        resources.append({"resource": e.resource, "request": request})
    return {"min_time": float(req.min_time), "n_nodes": req.n_nodes, "resources": resources}


def descriptor_to_json(item: ResourceDescriptorItem) -> JsonOutObject:
    if item.kind is ResourceKind.RANGE:
        return {"name": item.name, "kind": "range", "start": item.start, "end": item.end}
    if item.kind is ResourceKind.SUM:
        return {"name": item.name, "kind": "sum", "size": item.size}
    if item.kind is ResourceKind.LIST:
        return {"name": item.name, "kind": "list", "values": list(item.values)}
    return {"name": item.name, "kind": "groups", "groups": [list(g) for g in item.groups]}


def build_request(
    cpus: str | None,
    resources: Sequence[str],
    *,
    n_nodes: int = 0,
    time_request: float = 0.0,
) -> ResourceRequest:
    """The request of `hq submit --cpus X --resource a=1 ... [--nodes N] [--time-request T]`."""
    if n_nodes < 0:
        raise ValueError(f"invalid node count {n_nodes}: expected 0 or more")
    if n_nodes > 0 and cpus is not None:
        raise ValueError("--nodes cannot be combined with --cpus")
    if n_nodes > 0 and resources:
        # A multi-node task takes its workers whole; a request on top would be ignored by the
        # placement while the fit check held it against the workers.
        raise ValueError(
            "--nodes cannot be combined with --resource: a multi-node task takes whole workers"
        )
    if time_request < 0:
        raise ValueError(f"invalid time request {time_request}: expected 0 or more seconds")
    entries: list[ResourceAmountRequest] = []
    seen: set[str] = set()
    for arg in resources:
        name, value = parse_resource_arg(arg)
        if name in seen:
            raise ValueError(f"resource {name!r} is requested more than once")
        seen.add(name)
        entries.append(parse_request_entry(name, value))
    if cpus is not None:
        if "cpus" in seen:
            raise ValueError("cpus are requested twice (--cpus and --resource cpus=...)")
        entries.append(parse_request_entry("cpus", cpus))
    elif "cpus" not in seen and n_nodes == 0:
        entries.append(ResourceAmountRequest("cpus", FRACTIONS))
    return ResourceRequest(
        entries=tuple(_cpus_last(entries)), n_nodes=n_nodes, min_time=time_request
    )


# --- resource grants on a worker ----------------------------------------------------------------


@attrs.frozen
class ResourceGrant:
    """What one task got of a worker's resources ("allocation" names a batch job, design.md).
    For an indexed pool whose amount has a fractional part, the last index is the one shared
    with other tasks; the others are whole."""

    indices: dict[str, tuple[str, ...]]
    amounts: dict[str, int]


class _SumPool:
    def __init__(self, item: ResourceDescriptorItem) -> None:
        self.capacity = item.size * FRACTIONS
        self.free = self.capacity

    def allocate(self, amount: int) -> int | None:
        if amount == ALL:
            amount = self.capacity if self.free == self.capacity else -1
        if amount < 0 or amount > self.free:
            return None
        self.free -= amount
        return amount

    def release(self, name: str, amount: int) -> None:
        if self.free + amount > self.capacity:
            raise ValueError(f"release of {format_amount(amount)} {name}: more than allocated")
        self.free += amount


class _IndexedPool:
    """Free whole indices per group (sorted positions), plus shares left on split indices."""

    def __init__(self, item: ResourceDescriptorItem) -> None:
        groups = item.groups if item.kind is ResourceKind.GROUPS else (item.indices(),)
        self.labels: list[str] = [label for g in groups for label in g]
        self.position = {label: i for i, label in enumerate(self.labels)}
        self.group_of: list[int] = [gi for gi, g in enumerate(groups) for _ in g]
        self.free_by_group: list[list[int]] = []
        pos = 0
        for g in groups:
            self.free_by_group.append(list(range(pos, pos + len(g))))
            pos += len(g)
        self.min_group_size = min((len(g) for g in groups), default=1) or 1
        self.is_free = bytearray(b"\x01" * len(self.labels))
        self.n_free = len(self.labels)
        self.partial: dict[int, int] = {}
        self.partial_total = 0
        self.capacity = len(self.labels) * FRACTIONS

    def free_amount(self) -> int:
        return self.n_free * FRACTIONS + self.partial_total

    def _plan(self, k: int, policy: AllocationPolicy) -> list[tuple[int, int]] | None:
        """(group, count) pairs that take `k` whole indices, or None if the policy forbids."""
        if k == 0:
            return []
        if k > self.n_free:
            return None
        free = self.free_by_group
        if len(free) == 1:
            return [(0, k)]
        by_free = sorted(range(len(free)), key=lambda g: (-len(free[g]), g))
        if policy is AllocationPolicy.SCATTER:
            counts = dict.fromkeys(by_free, 0)
            left = k
            while left:
                for g in by_free:
                    if counts[g] < len(free[g]):
                        counts[g] += 1
                        left -= 1
                        if not left:
                            break
            return [(g, c) for g, c in counts.items() if c]
        fitting = [g for g in range(len(free)) if len(free[g]) >= k]
        if fitting:
            best = min(fitting, key=lambda g: (len(free[g]), g))
            return [(best, k)]
        plan: list[tuple[int, int]] = []
        left = k
        for g in by_free:
            take = min(left, len(free[g]))
            plan.append((g, take))
            left -= take
            if not left:
                break
        if policy in _FORCED and len(plan) > -(-k // self.min_group_size):
            return None
        return plan

    def allocate(self, amount: int, policy: AllocationPolicy) -> tuple[list[int], int] | None:
        """Positions taken (a shared one last) and the amount, or None."""
        if amount == ALL:
            if self.n_free != len(self.labels):
                return None
            everything = list(range(len(self.labels)))
            for free_list in self.free_by_group:
                free_list.clear()
            self.is_free = bytearray(len(self.labels))
            self.n_free = 0
            return everything, self.capacity
        whole, fraction = divmod(amount, FRACTIONS)
        if amount > self.free_amount() or whole > self.n_free:
            return None
        share: int | None = None
        if fraction:
            fits = [(rest, p) for p, rest in self.partial.items() if rest >= fraction]
            if fits:
                share = min(fits)[1]
        fresh = whole + (1 if fraction and share is None else 0)
        plan = self._plan(fresh, policy)
        if plan is None:
            return None
        taken = []
        for g, count in plan:
            group = self.free_by_group[g]
            taken.extend(group[:count])
            del group[:count]
        for p in taken:
            self.is_free[p] = 0
        self.n_free -= len(taken)
        taken.sort()
        if fraction:
            if share is None:
                share = taken.pop()
                self.partial[share] = FRACTIONS
                self.partial_total += FRACTIONS
            self.partial[share] -= fraction
            self.partial_total -= fraction
            if not self.partial[share]:
                del self.partial[share]
            taken.append(share)
        return taken, amount

    def _return_whole(self, name: str, p: int) -> None:
        if self.is_free[p] or p in self.partial:
            raise ValueError(f"release of {name} index {self.labels[p]!r}: it is not allocated")
        self.is_free[p] = 1
        self.n_free += 1
        bisect.insort(self.free_by_group[self.group_of[p]], p)

    def release(self, name: str, labels: Sequence[str], amount: int) -> None:
        try:
            positions = [self.position[label] for label in labels]
        except KeyError as e:
            raise ValueError(f"release of unknown {name} index {e.args[0]!r}") from None
        fraction = 0 if amount == ALL else amount % FRACTIONS
        if fraction:
            share = positions.pop()
            if self.is_free[share]:
                raise ValueError(f"release of {name} index {labels[-1]!r}: it is not allocated")
            rest = self.partial.get(share, 0) + fraction
            if rest > FRACTIONS:
                raise ValueError(f"release of {name} index {labels[-1]!r}: more than allocated")
            self.partial_total += fraction
            if rest == FRACTIONS:
                del self.partial[share]
                self.partial_total -= FRACTIONS
                self._return_whole(name, share)
            else:
                self.partial[share] = rest
        for p in positions:
            self._return_whole(name, p)


class ResourcePool:
    """A worker's free resources; picks concrete indices for the tasks it starts.

    A multi-node request (`n_nodes > 0`) takes the whole worker. `min_time` is the server's
    business (it knows the worker's remaining lifetime) and is not checked here.
    """

    def __init__(self, items: Sequence[ResourceDescriptorItem]) -> None:
        self._pools: dict[str, _SumPool | _IndexedPool] = {}
        for item in items:
            if item.name in self._pools:
                raise ValueError(f"resource {item.name!r} is defined more than once")
            self._pools[item.name] = (
                _SumPool(item) if item.kind is ResourceKind.SUM else _IndexedPool(item)
            )

    def free(self, name: str) -> int:
        """Free amount of `name` in 1/10,000 units (0 for a resource the worker lacks)."""
        pool = self._pools.get(name)
        if pool is None:
            return 0
        return pool.free if isinstance(pool, _SumPool) else pool.free_amount()

    def capacity(self, name: str) -> int:
        pool = self._pools.get(name)
        return 0 if pool is None else pool.capacity

    def try_allocate(self, req: ResourceRequest) -> ResourceGrant | None:
        """Takes what `req` needs, or nothing at all (None) if any part cannot be had now."""
        if req.n_nodes > 0:
            entries = [ResourceAmountRequest(name, ALL) for name in self._pools]
        else:
            entries = list(req.entries)
            names = [e.resource for e in entries]
            if len(set(names)) != len(names):
                raise ValueError(f"resource request {names} names a resource more than once")
        alloc = ResourceGrant(indices={}, amounts={})
        for entry in entries:
            if entry.amount == 0:
                continue
            pool = self._pools.get(entry.resource)
            got: int | None = None
            if isinstance(pool, _SumPool):
                got = pool.allocate(entry.amount)
            elif pool is not None:
                result = pool.allocate(entry.amount, entry.policy)
                if result is not None:
                    positions, got = result
                    alloc.indices[entry.resource] = tuple(pool.labels[p] for p in positions)
            if got is None:
                self.release(alloc)
                return None
            alloc.amounts[entry.resource] = got
        return alloc

    def release(self, alloc: ResourceGrant) -> None:
        """Gives back everything `alloc` holds."""
        for name, amount in alloc.amounts.items():
            pool = self._pools.get(name)
            if pool is None:
                raise ValueError(f"release of unknown resource {name!r}")
            if isinstance(pool, _SumPool):
                pool.release(name, amount)
            else:
                pool.release(name, alloc.indices.get(name, ()), amount)
