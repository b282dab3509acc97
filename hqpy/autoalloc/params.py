"""Checking a queue's parameters, and turning them into one allocation's submit request."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hqpy.autoalloc.backends import registry
from hqpy.autoalloc.backends.base import AllocationRequest
from hqpy.autoalloc.backends.common import allocation_name, build_worker_command
from hqpy.autoalloc.planner import declared_resources, local_cpus
from hqpy.common.errors import RequestError
from hqpy.protocol.messages import QueueParams


class AllocError(RequestError):
    """A request about queues that cannot be done; the message is shown to the user."""


def hq_argv() -> list[str]:
    """How a worker started by an allocation runs this same `hq`."""
    argv0 = sys.argv[0]
    if not argv0 or argv0.endswith("__main__.py") or argv0 == "-m":
        return [sys.executable, "-m", "hqpy"]
    return [os.path.abspath(argv0)]


def validate_params(params: QueueParams) -> None:
    """Refuse what HyperQueue refuses, with its messages."""
    managers = registry.names()
    if params.manager not in managers:
        raise AllocError(f"Unknown manager `{params.manager}`; use one of {', '.join(managers)}")
    if params.backlog < 1:
        raise AllocError("Backlog has to be at least 1")
    if params.workers_per_alloc < 1:
        raise AllocError("Workers per allocation has to be at least 1")
    if params.max_worker_count is not None and params.max_worker_count < 1:
        raise AllocError("Max worker count has to be at least 1")
    if params.time_limit <= 0:
        raise AllocError("Time limit has to be positive")
    if params.worker_time_limit is not None and params.worker_time_limit > params.time_limit:
        raise AllocError("Worker time limit cannot be larger than queue time limit")
    try:
        declared_resources(params)
    except ValueError as e:
        raise AllocError(f"Invalid worker resources: {e}") from None


def allocation_request(
    params: QueueParams,
    queue_id: int,
    seq: int,
    workers: int,
    workdir: Path,
    *,
    instance_dir: Path,
    host_cpus: int,
    dry_run: bool = False,
) -> AllocationRequest:
    """What the backend renders into the allocation's `hq-submit.sh`."""
    command = build_worker_command(
        params,
        hq_argv=hq_argv(),
        server_dir=instance_dir,
        manager=params.manager,
        hqpy_log=os.environ.get("HQPY_LOG"),
        cpus_override=local_cpus(params, host_cpus),
    )
    return AllocationRequest(
        queue_id=queue_id,
        seq=seq,
        name=allocation_name(queue_id, seq, params.name),
        worker_count=workers,
        time_limit=params.time_limit,
        additional_args=params.additional_args,
        worker_command=command,
        workdir=workdir,
        dry_run=dry_run,
    )
