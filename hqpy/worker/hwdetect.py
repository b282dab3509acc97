"""What resources this machine gives a worker when the user does not say: cpus and memory.

The cpus are those this process may run on (its affinity mask, narrowed by the cgroup cpuset),
and no more than its batch allocation was given on this node: a worker in a 1-core Slurm or PBS
allocation is a 1-cpu worker even when the node has more and nothing pins it to one core.
`--cpus` given explicitly wins over all of this.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from hqpy.common.resources import ResourceDescriptorItem, ResourceKind

log = logging.getLogger(__name__)

ALLOCATION_CPU_VARIABLES = ("SLURM_CPUS_ON_NODE", "PBS_NCPUS", "NCPUS")
"""Variables that give the cpus of this node's share of a batch allocation, in order."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
READ_LIMIT = 65536


def parse_cpu_list(text: str, limit: int = 1 << 16) -> set[int]:
    """Linux's cpu list format (`0-3,8,10-11`) as a set; ValueError when malformed. Ranges are
    bounded by `limit` ids, so a bad file cannot make this loop for ever."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        start, end = int(first), int(last or first)
        if start < 0 or end < start or end - start >= limit:
            raise ValueError(f"bad cpu range `{part}`")
        out.update(range(start, end + 1))
    return out


def allocation_cpu_count(env: Mapping[str, str]) -> int | None:
    """The cpus the batch allocation gives this node (Slurm, then PBS), or None."""
    for name in ALLOCATION_CPU_VARIABLES:
        value = env.get(name, "").strip()
        if not value:
            continue
        try:
            count = int(value)
        except ValueError:
            log.warning("Ignoring %s=%r: not a number of cpus", name, value)
            continue
        if count > 0:
            return count
    return None


def _read(path: Path) -> str | None:
    try:
        with open(path) as f:
            return f.read(READ_LIMIT)
    except (OSError, ValueError):
        return None


def cgroup_cpuset(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT
) -> set[int] | None:
    """The cpus of this process's cgroup cpuset (v2 or v1), or None when there is none."""
    listing = _read(proc_cgroup)
    if listing is None:
        return None
    candidates: list[Path] = []
    for line in listing.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        relative = path.lstrip("/")
        if controllers == "":
            candidates.append(root / relative / "cpuset.cpus.effective")
        elif "cpuset" in controllers.split(","):
            candidates.append(root / "cpuset" / relative / "cpuset.cpus")
    for candidate in candidates:
        text = _read(candidate)
        if text is None or not text.strip():
            continue
        try:
            return parse_cpu_list(text)
        except ValueError:
            log.warning("Ignoring the cpuset in %s: %r", candidate, text[:100])
    return None


def select_cpus(
    affinity: Iterable[int], cpuset: set[int] | None, env: Mapping[str, str]
) -> list[int]:
    """The worker's cpu ids: the affinity mask within the cpuset, cut to the allocation's count."""
    ids = sorted(affinity)
    if cpuset:
        ids = [i for i in ids if i in cpuset] or ids
    count = allocation_cpu_count(env)
    if count is not None and count < len(ids):
        ids = ids[:count]
    return ids


def cpus_item(ids: list[int]) -> ResourceDescriptorItem:
    if ids == list(range(ids[0], ids[-1] + 1)):
        return ResourceDescriptorItem("cpus", ResourceKind.RANGE, start=ids[0], end=ids[-1])
    return ResourceDescriptorItem("cpus", ResourceKind.LIST, values=tuple(str(i) for i in ids))


def detect_cpus(env: Mapping[str, str] | None = None) -> ResourceDescriptorItem:
    """The cpus this worker may use, as an indexed pool (see the module doc)."""
    try:
        affinity: Iterable[int] = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        affinity = range(os.cpu_count() or 1)
    ids = select_cpus(affinity, cgroup_cpuset(), os.environ if env is None else env)
    return cpus_item(ids)


def detect_memory_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def detect_resources(
    wanted: set[str] | None, env: Mapping[str, str] | None = None
) -> list[ResourceDescriptorItem]:
    """Detected pools, limited to the names in `wanted` (None: all)."""
    out = []
    if wanted is None or "cpus" in wanted:
        out.append(detect_cpus(env))
    if wanted is None or "mem" in wanted:
        mem = detect_memory_mib()
        if mem:
            out.append(ResourceDescriptorItem("mem", ResourceKind.SUM, size=mem))
    return out
