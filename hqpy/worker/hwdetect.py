"""What resources this machine gives a worker when the user does not say: cpus and memory."""

from __future__ import annotations

import os

from hqpy.common.resources import ResourceDescriptorItem, ResourceKind


def detect_cpus() -> ResourceDescriptorItem:
    """The cpus this process may run on (its affinity mask), as an indexed pool."""
    try:
        ids = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        ids = list(range(os.cpu_count() or 1))
    if ids == list(range(ids[0], ids[-1] + 1)):
        return ResourceDescriptorItem("cpus", ResourceKind.RANGE, start=ids[0], end=ids[-1])
    return ResourceDescriptorItem("cpus", ResourceKind.LIST, values=tuple(str(i) for i in ids))


def detect_memory_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def detect_resources(wanted: set[str] | None) -> list[ResourceDescriptorItem]:
    """Detected pools, limited to the names in `wanted` (None: all)."""
    out = []
    if wanted is None or "cpus" in wanted:
        out.append(detect_cpus())
    if wanted is None or "mem" in wanted:
        mem = detect_memory_mib()
        if mem:
            out.append(ResourceDescriptorItem("mem", ResourceKind.SUM, size=mem))
    return out
