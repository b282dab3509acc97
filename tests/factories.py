"""Objects that tests build by hand, in one place: a worker's configuration, a submit, a
resource request. Keyword arguments override what a test cares about; the rest is neutral."""

from __future__ import annotations

import json
from typing import Any

from hqpy.common.jsontypes import JsonOut
from hqpy.common.resources import (
    FRACTIONS,
    ResourceAmountRequest,
    ResourceDescriptorItem,
    ResourceKind,
    ResourceRequest,
)
from hqpy.protocol import messages as m


def cpu_resources(cpus: int, **sums: int) -> tuple[ResourceDescriptorItem, ...]:
    """`cpus` as a range `0..cpus-1`, plus summed resources (`gpus=2`)."""
    items = [ResourceDescriptorItem("cpus", ResourceKind.RANGE, start=0, end=cpus - 1)]
    items += [ResourceDescriptorItem(n, ResourceKind.SUM, size=s) for n, s in sums.items()]
    return tuple(items)


def worker_config(
    cpus: int = 4,
    hostname: str = "node1",
    *,
    heartbeat_interval: float = 8.0,
    idle_timeout: float | None = None,
    time_limit: float | None = None,
    resources: tuple[ResourceDescriptorItem, ...] | None = None,
    manager: m.ManagerInfo | None = None,
    work_dir: str = "/tmp",
    listen_address: str = "",
    pid: int = 1,
    filter_tags: tuple[str, ...] = (),
    group: str = "default",
) -> m.WorkerConfiguration:
    return m.WorkerConfiguration(
        hostname=hostname,
        work_dir=work_dir,
        listen_address=listen_address,
        heartbeat_interval=heartbeat_interval,
        idle_timeout=idle_timeout,
        time_limit=time_limit,
        resources=cpu_resources(cpus) if resources is None else resources,
        group=group,
        on_server_lost="stop",
        pid=pid,
        manager=manager,
        filter_tags=filter_tags,
    )


def cpu_request(cpus: int = 1) -> ResourceRequest:
    return ResourceRequest((ResourceAmountRequest("cpus", cpus * FRACTIONS),))


def submit_desc(
    ids: str = "0",
    *,
    args: tuple[str, ...] = ("true",),
    env: dict[str, str] | None = None,
    cwd: str = "%{SUBMIT_DIR}",
    request: ResourceRequest | None = None,
    crash_limit: int = 5,
    entries: list[str] | None = None,
    tags: tuple[str, ...] = (),
    pool: str | None = None,
) -> m.SubmitDesc:
    return m.SubmitDesc(
        ids=ids,
        args=args,
        env={} if env is None else env,
        cwd=cwd,
        stdout=None,
        stderr=None,
        submit_dir="/tmp",
        request=cpu_request() if request is None else request,
        entries=entries,
        crash_limit=crash_limit,
        tags=tags,
        pool=pool,
    )


def as_json(doc: JsonOut) -> Any:
    """`doc` as a reader of the JSON sees it (round-tripped, so it must be plain JSON), untyped
    so that tests can index into it."""
    return json.loads(json.dumps(doc))
