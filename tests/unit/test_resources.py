from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hqpy.common.resources import (
    ALL,
    FRACTIONS,
    AllocationPolicy,
    ResourceAmountRequest,
    ResourceDescriptorItem,
    ResourceGrant,
    ResourceKind,
    ResourcePool,
    ResourceRequest,
    build_request,
    descriptor_to_json,
    format_amount,
    format_descriptor_long,
    format_descriptor_short,
    format_request,
    parse_amount,
    parse_descriptor,
    parse_request_entry,
    parse_resource_arg,
    request_to_json,
)

# --- amounts and requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "amount"),
    [("2", 20000), ("0.5", 5000), ("1.2345", 12345), ("0.0001", 1), ("all", ALL), (" 3 ", 30000)],
)
def test_parse_amount_uses_ten_thousandths(text: str, amount: int) -> None:
    assert parse_amount(text) == amount


@pytest.mark.parametrize("text", ["", "x", "-1", "1.23456", "1.", ".5", "1e3", "1,5"])
def test_parse_amount_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="resource amount"):
        parse_amount(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_amount_round_trips(amount: int) -> None:
    assert parse_amount(format_amount(amount)) == amount


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", ResourceAmountRequest("cpus", 20000, AllocationPolicy.COMPACT)),
        ("4 compact!", ResourceAmountRequest("cpus", 40000, AllocationPolicy.FORCE_COMPACT)),
        ("2 scatter", ResourceAmountRequest("cpus", 20000, AllocationPolicy.SCATTER)),
        ("0.25 tight", ResourceAmountRequest("cpus", 2500, AllocationPolicy.TIGHT)),
        ("3 tight!", ResourceAmountRequest("cpus", 30000, AllocationPolicy.FORCE_TIGHT)),
        ("all", ResourceAmountRequest("cpus", ALL)),
        ("5_000 compact", ResourceAmountRequest("cpus", 50_000_000, AllocationPolicy.COMPACT)),
    ],
)
def test_parse_request_entry(text: str, expected: ResourceAmountRequest) -> None:
    assert parse_request_entry("cpus", text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "zero resources"),
        ("0.5 compact!", "fractional"),
        ("0.5 tight!", "fractional"),
        ("2 loose", "expected one of compact, compact!, tight, tight!, scatter"),
        ("all scatter", "expected an amount"),
        ("", "expected an amount"),
        ("2 compact extra", "expected an amount"),
    ],
)
def test_parse_request_entry_rejects_bad_requests(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request_entry("gpus", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("gpus=2", ("gpus", "2")), ("gpus/nvidia = 1 compact", ("gpus/nvidia", "1 compact"))],
)
def test_parse_resource_arg_splits_name_and_value(text: str, expected: tuple[str, str]) -> None:
    assert parse_resource_arg(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpus", "expected NAME=VALUE"),
        ("=2", "invalid resource name"),
        ("1gpu=2", "starting with a letter"),
        ("gp_us=2", "ASCII letters, digits and '/'"),
        ("gpus=", "missing value"),
    ],
)
def test_parse_resource_arg_rejects_bad_names(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_resource_arg(text)


# --- descriptors -------------------------------------------------------------------------------


def test_plain_number_is_a_range_from_zero() -> None:
    item = parse_descriptor("cpus", "4")
    assert item == ResourceDescriptorItem("cpus", ResourceKind.RANGE, start=0, end=3)
    assert parse_descriptor("gpus", " 2 ").indices() == ("0", "1")


def test_x_notation_builds_consecutive_groups() -> None:
    item = parse_descriptor("cpus", "4x5")
    assert item.kind is ResourceKind.GROUPS
    assert [len(g) for g in item.groups] == [5, 5, 5, 5]
    assert item.indices() == tuple(str(i) for i in range(20))
    assert item.groups[1] == ("5", "6", "7", "8", "9")


@pytest.mark.parametrize(
    ("text", "values"), [("[1,2,4]", ("1", "2", "4")), (" [ a , b ] ", ("a", "b"))]
)
def test_bracket_list(text: str, values: tuple[str, ...]) -> None:
    item = parse_descriptor("gpus", text)
    assert item.kind is ResourceKind.LIST and item.values == values


def test_nested_brackets_are_groups_and_a_single_group_is_a_list() -> None:
    item = parse_descriptor("cpus", "[[0,1], [2]]")
    assert item.kind is ResourceKind.GROUPS and item.groups == (("0", "1"), ("2",))
    single = parse_descriptor("cpus", "[[5,7,123]]")
    assert single.kind is ResourceKind.LIST and single.values == ("5", "7", "123")


def test_range_and_sum() -> None:
    assert parse_descriptor("gpus", "range( 1 - 4 )").indices() == ("1", "2", "3", "4")
    mem = parse_descriptor("mem", "sum(100)")
    assert mem.kind is ResourceKind.SUM and mem.size == 100 and mem.capacity() == 100 * FRACTIONS


def test_sum_is_rejected_for_cpus() -> None:
    with pytest.raises(ValueError, match="cpus cannot be a sum resource"):
        parse_descriptor("cpus", "sum(4)")


@pytest.mark.parametrize(
    "text", ["", "0", "x", "[]", "[1,1]", "[[0],[]]", "[[0],[0]]", "[[0],[1]", "range(5-3)", "1x"]
)
def test_bad_descriptors_are_rejected_naming_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="invalid resource 'cpus' definition"):
        parse_descriptor("cpus", text)


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("10", "cpus 10"),
        ("[3,5,7]", "cpus 3"),
        ("range(2-5)", "cpus 4"),
        ("4x5", "cpus 4x5"),
        ("[[100,200,300],[400,500,600]]", "cpus 2x3"),
        ("[[0,1],[2],[10,11,12]]", "cpus 1x1 1x2 1x3"),
        ("[[0,1],[2,3],[4]]", "cpus 1x1 2x2"),
    ],
)
def test_format_descriptor_short_matches_worker_list(text: str, short: str) -> None:
    item = parse_descriptor("cpus", text)
    assert format_descriptor_short(item) == short
    assert format_descriptor_long(item) == short.replace("cpus ", "cpus: ")


def test_single_group_descriptor_shows_its_size() -> None:
    item = ResourceDescriptorItem("cpus", ResourceKind.GROUPS, groups=(("0", "1", "2"),))
    assert format_descriptor_short(item) == "cpus 3"


def test_sum_descriptor_shows_its_size() -> None:
    assert format_descriptor_long(parse_descriptor("mem", "sum(2048)")) == "mem: 2048"


def test_descriptor_to_json_shapes() -> None:
    assert descriptor_to_json(parse_descriptor("cpus", "2")) == {
        "name": "cpus",
        "kind": "range",
        "start": 0,
        "end": 1,
    }
    assert descriptor_to_json(parse_descriptor("mem", "sum(5)")) == {
        "name": "mem",
        "kind": "sum",
        "size": 5,
    }
    assert descriptor_to_json(parse_descriptor("gpus", "[a,b]")) == {
        "name": "gpus",
        "kind": "list",
        "values": ["a", "b"],
    }
    assert descriptor_to_json(parse_descriptor("cpus", "2x1")) == {
        "name": "cpus",
        "kind": "groups",
        "groups": [["0"], ["1"]],
    }


# --- requests ------------------------------------------------------------------------------------


def test_build_request_defaults_to_one_cpu() -> None:
    req = build_request(None, [])
    assert req.entries == (ResourceAmountRequest("cpus", FRACTIONS),)
    assert format_request(req) == "cpus: 1 compact"


def test_build_request_puts_cpus_last_and_keeps_other_order() -> None:
    req = build_request("2", ["res2=1", "res1=3 scatter"], time_request=60.0)
    assert [e.resource for e in req.entries] == ["res2", "res1", "cpus"]
    assert req.min_time == 60.0
    req2 = build_request(None, ["cpus=4", "gpus=1"])
    assert [e.resource for e in req2.entries] == ["gpus", "cpus"]


def test_build_request_multi_node_has_no_implicit_cpus() -> None:
    req = build_request(None, [], n_nodes=2)
    assert req.entries == () and req.n_nodes == 2
    with pytest.raises(ValueError, match="--nodes cannot be combined with --cpus"):
        build_request("1", [], n_nodes=2)
    # Placement takes whole workers and ignored such a request, while the fit check held it
    # against the workers: `--nodes 2 --resource gpus=1` ran on workers without gpus.
    with pytest.raises(ValueError, match="--nodes cannot be combined with --resource"):
        build_request(None, ["gpus=1"], n_nodes=2)


@pytest.mark.parametrize(
    ("cpus", "resources"),
    [(None, ["gpus=1", "gpus=2"]), ("1", ["cpus=2"])],
)
def test_build_request_rejects_duplicates(cpus: str | None, resources: list[str]) -> None:
    with pytest.raises(ValueError, match="more than once|twice"):
        build_request(cpus, resources)


def test_format_request_sorts_by_name_and_trims_decimals() -> None:
    req = build_request("0.5", ["gpus=1", "aaa=all", "mem=2.25 scatter"])
    assert format_request(req) == "aaa: all\ncpus: 0.5 compact\ngpus: 1 compact\nmem: 2.25 scatter"


def test_request_to_json_matches_hq_shape() -> None:
    req = build_request(
        None, ["res1=2", "res2=8 compact!", "res3=all", "res4=4 scatter", "res5=1 tight"]
    )
    assert request_to_json(req) == {
        "min_time": 0.0,
        "n_nodes": 0,
        "resources": [
            {"resource": "res1", "request": {"Compact": 20000}},
            {"resource": "res2", "request": {"ForceCompact": 80000}},
            {"resource": "res3", "request": "All"},
            {"resource": "res4", "request": {"Scatter": 40000}},
            {"resource": "res5", "request": {"Tight": 10000}},
            {"resource": "cpus", "request": {"Compact": 10000}},
        ],
    }
    forced_tight = ResourceRequest(
        (ResourceAmountRequest("cpus", 20000, AllocationPolicy.FORCE_TIGHT),)
    )
    assert request_to_json(forced_tight)["resources"] == [
        {"resource": "cpus", "request": {"ForceTight": 20000}}
    ]


# --- the worker's pool ---------------------------------------------------------------------------


def _req(*entries: str, n_nodes: int = 0) -> ResourceRequest:
    parsed = [parse_resource_arg(e) for e in entries]
    return ResourceRequest(tuple(parse_request_entry(n, v) for n, v in parsed), n_nodes=n_nodes)


def _pool(**defs: str) -> ResourcePool:
    return ResourcePool([parse_descriptor(name, text) for name, text in defs.items()])


def test_pool_allocates_lowest_free_indices_and_releases() -> None:
    pool = _pool(cpus="4")
    a = pool.try_allocate(_req("cpus=2"))
    assert a == ResourceGrant(indices={"cpus": ("0", "1")}, amounts={"cpus": 20000})
    b = pool.try_allocate(_req("cpus=2"))
    assert b is not None and b.indices["cpus"] == ("2", "3")
    assert pool.free("cpus") == 0
    assert pool.try_allocate(_req("cpus=1")) is None
    pool.release(a)
    assert pool.free("cpus") == 20000
    c = pool.try_allocate(_req("cpus=1"))
    assert c is not None and c.indices["cpus"] == ("0",)


def test_pool_failure_takes_nothing() -> None:
    pool = _pool(cpus="4", gpus="1")
    assert pool.try_allocate(_req("cpus=2", "gpus=2")) is None
    assert pool.free("cpus") == 4 * FRACTIONS and pool.free("gpus") == FRACTIONS


def test_pool_lacking_a_resource_fails_unless_amount_is_zero() -> None:
    pool = _pool(cpus="2")
    assert pool.try_allocate(_req("cpus=1", "gpus=1")) is None
    zero = ResourceRequest(
        (ResourceAmountRequest("gpus", 0), ResourceAmountRequest("cpus", FRACTIONS))
    )
    alloc = pool.try_allocate(zero)
    assert alloc is not None and "gpus" not in alloc.amounts
    assert pool.free("gpus") == 0


def test_fractional_requests_share_one_index() -> None:
    pool = _pool(gpus="2")
    a = pool.try_allocate(_req("gpus=0.5"))
    b = pool.try_allocate(_req("gpus=0.5"))
    assert a is not None and b is not None
    assert a.indices["gpus"] == b.indices["gpus"] == ("0",)
    assert pool.free("gpus") == FRACTIONS
    c = pool.try_allocate(_req("gpus=0.25"))
    assert c is not None and c.indices["gpus"] == ("1",)
    pool.release(a)
    pool.release(b)
    assert pool.free("gpus") == FRACTIONS + 7500
    d = pool.try_allocate(_req("gpus=1"))
    assert d is not None and d.indices["gpus"] == ("0",)


def test_fractional_amount_with_whole_part_lists_shared_index_last() -> None:
    pool = _pool(gpus="3")
    first = pool.try_allocate(_req("gpus=0.5"))
    assert first is not None
    alloc = pool.try_allocate(_req("gpus=1.5"))
    assert alloc is not None
    assert alloc.indices["gpus"] == ("1", "0")
    assert alloc.amounts["gpus"] == 15000
    pool.release(alloc)
    pool.release(first)
    assert pool.free("gpus") == 3 * FRACTIONS


def test_all_takes_the_whole_pool_only_when_entirely_free() -> None:
    pool = _pool(gpus="[a,b,c]", mem="sum(100)")
    alloc = pool.try_allocate(_req("gpus=all", "mem=all"))
    assert alloc is not None
    assert alloc.indices == {"gpus": ("a", "b", "c")}
    assert alloc.amounts == {"gpus": 3 * FRACTIONS, "mem": 100 * FRACTIONS}
    pool.release(alloc)
    part = pool.try_allocate(_req("gpus=0.1"))
    assert part is not None
    assert pool.try_allocate(_req("gpus=all")) is None
    pool.release(part)
    assert pool.try_allocate(_req("gpus=all")) is not None


def test_sum_pool_tracks_amounts() -> None:
    pool = _pool(mem="sum(1000)")
    a = pool.try_allocate(_req("mem=600"))
    assert a is not None and a.indices == {} and a.amounts == {"mem": 600 * FRACTIONS}
    assert pool.try_allocate(_req("mem=500")) is None
    assert pool.try_allocate(_req("mem=400")) is not None
    pool.release(a)
    assert pool.free("mem") == 600 * FRACTIONS


def test_compact_prefers_a_single_group() -> None:
    pool = _pool(cpus="[[0,1,2,3],[4,5,6,7]]")
    first = pool.try_allocate(_req("cpus=1"))
    assert first is not None
    alloc = pool.try_allocate(_req("cpus=4"))
    assert alloc is not None and alloc.indices["cpus"] == ("4", "5", "6", "7")


def test_compact_spills_over_groups_when_needed_but_forced_compact_does_not() -> None:
    pool = _pool(cpus="2x4")
    blocker = pool.try_allocate(_req("cpus=1"))
    other = pool.try_allocate(_req("cpus=4"))
    assert blocker is not None and other is not None
    pool.release(other)
    hold = pool.try_allocate(_req("cpus=1 scatter"))
    assert hold is not None
    assert pool.try_allocate(_req("cpus=4 compact!")) is None
    assert pool.try_allocate(_req("cpus=4 tight!")) is None
    spill = pool.try_allocate(_req("cpus=4"))
    assert spill is not None and len(spill.indices["cpus"]) == 4
    groups = {int(i) // 4 for i in spill.indices["cpus"]}
    assert groups == {0, 1}


def test_forced_compact_succeeds_within_the_minimal_number_of_groups() -> None:
    pool = _pool(cpus="2x4")
    alloc = pool.try_allocate(_req("cpus=6 compact!"))
    assert alloc is not None and len(alloc.indices["cpus"]) == 6


def test_scatter_spreads_across_groups() -> None:
    pool = _pool(cpus="4x4")
    alloc = pool.try_allocate(_req("cpus=4 scatter"))
    assert alloc is not None
    assert sorted(int(i) // 4 for i in alloc.indices["cpus"]) == [0, 1, 2, 3]


def test_multi_node_request_takes_the_whole_worker() -> None:
    pool = _pool(cpus="4", mem="sum(10)")
    alloc = pool.try_allocate(_req(n_nodes=1))
    assert alloc is not None and pool.free("cpus") == 0 and pool.free("mem") == 0
    pool.release(alloc)
    busy = pool.try_allocate(_req("cpus=1"))
    assert busy is not None
    assert pool.try_allocate(_req(n_nodes=1)) is None


def test_double_release_is_an_error() -> None:
    pool = _pool(cpus="2")
    alloc = pool.try_allocate(_req("cpus=1"))
    assert alloc is not None
    pool.release(alloc)
    with pytest.raises(ValueError, match="not allocated"):
        pool.release(alloc)


def test_single_cpu_allocations_cycle_through_a_large_pool() -> None:
    """64 single-cpu tasks take 64 different cpus; released cpus are taken again, over many
    cycles (how fast this is belongs to scripts/bench.py, not to a test)."""
    pool = _pool(cpus="64")
    req = _req("cpus=1")
    held = [pool.try_allocate(req) for _ in range(64)]
    assert all(alloc is not None for alloc in held)
    assert len({alloc.indices["cpus"] for alloc in held if alloc is not None}) == 64
    assert pool.try_allocate(req) is None
    for alloc in held[:2]:
        assert alloc is not None
        pool.release(alloc)
    for _ in range(20_000):
        alloc = pool.try_allocate(req)
        assert alloc is not None
        assert alloc.indices["cpus"] in {h.indices["cpus"] for h in held[:2] if h is not None}
        pool.release(alloc)
    assert pool.free("cpus") == 2 * 10_000


POOL_DEFS = {"cpus": "[[0,1,2],[3,4],[5,6,7,8]]", "gpus": "2", "mem": "sum(10)"}

requests = st.lists(
    st.tuples(
        st.sampled_from(["cpus", "gpus", "mem"]),
        st.sampled_from(["1", "2", "0.5", "0.25", "1.5", "3", "all"]),
        st.sampled_from(["", " compact", " scatter", " tight", " compact!"]),
    ),
    min_size=1,
    max_size=2,
    unique_by=lambda t: t[0],
)


@given(st.lists(st.tuples(st.booleans(), requests), max_size=40))
def test_pool_never_overcommits_and_release_restores(
    ops: list[tuple[bool, list[tuple[str, str, str]]]],
) -> None:
    pool = _pool(**POOL_DEFS)
    capacity = {name: pool.free(name) for name in POOL_DEFS}
    held: list[ResourceGrant] = []
    for release_first, entries in ops:
        if release_first and held:
            pool.release(held.pop(0))
        texts = []
        for name, amount, policy in entries:
            if policy == " compact!" and "." in amount or amount == "all":
                policy = ""
            texts.append(f"{name}={amount}{policy}")
        req = _req(*texts)
        before = {name: pool.free(name) for name in POOL_DEFS}
        alloc = pool.try_allocate(req)
        if alloc is None:
            assert {name: pool.free(name) for name in POOL_DEFS} == before
            continue
        held.append(alloc)
        for entry in req.entries:
            got = alloc.amounts[entry.resource]
            assert got == (capacity[entry.resource] if entry.amount == ALL else entry.amount)
            assert pool.free(entry.resource) == before[entry.resource] - got
        # Whole shares per index never exceed one unit across all holders.
        use: Counter[str] = Counter()
        for a in held:
            for name, labels in a.indices.items():
                held_amount = a.amounts[name]
                whole, frac = divmod(held_amount, FRACTIONS)
                assert len(labels) == whole + (1 if frac else 0)
                for label in labels[:whole]:
                    use[f"{name}:{label}"] += FRACTIONS
                if frac:
                    use[f"{name}:{labels[-1]}"] += frac
        assert all(v <= FRACTIONS for v in use.values())
    for alloc in held:
        pool.release(alloc)
    assert {name: pool.free(name) for name in POOL_DEFS} == capacity


def test_capacity_counts_without_listing_the_indices() -> None:
    from hqpy.common.resources import FRACTIONS, ResourceDescriptorItem, ResourceKind

    huge = ResourceDescriptorItem("x", ResourceKind.RANGE, start=5, end=10**15)
    assert huge.capacity() == (10**15 - 4) * FRACTIONS  # a list of them would not fit in memory
    groups = ResourceDescriptorItem("g", ResourceKind.GROUPS, groups=(("a", "b"), ("c",)))
    assert groups.count() == len(groups.indices()) == 3
    listed = ResourceDescriptorItem("l", ResourceKind.LIST, values=("a", "b"))
    assert listed.capacity() == 2 * FRACTIONS
    assert ResourceDescriptorItem("s", ResourceKind.SUM, size=7).capacity() == 7 * FRACTIONS
