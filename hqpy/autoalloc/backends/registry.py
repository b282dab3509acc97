"""Backend names (`hq alloc add <manager>`) to backend objects, built-ins and plug-ins.

Third parties add a batch system without touching hqpy by declaring an entry point in the
group `hqpy.backends`, whose object is a factory called as
`factory(nursery=<trio.Nursery>, timeout=<seconds>)` and returning a `BatchBackend`, e.g.

    [project.entry-points."hqpy.backends"]
    lsf = "my_package.lsf:LsfBackend"

A built-in name always wins over a plug-in of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import trio

from hqpy.autoalloc.backends.base import BatchBackend

ENTRY_POINT_GROUP = "hqpy.backends"

BUILTIN_BACKENDS = ("slurm", "pbs", "local")


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Every name `make_backend` accepts: the built-ins, then installed plug-ins."""
    extra = sorted(name for name in _plugins() if name not in BUILTIN_BACKENDS)
    return [*BUILTIN_BACKENDS, *extra]


def make_backend(
    manager: str, *, nursery: trio.Nursery | None = None, timeout: float = 30.0
) -> BatchBackend:
    """The backend for `manager` (`slurm`, `pbs`, `local` or a plug-in's name).

    Args:
        nursery: where the local backend runs its allocation watchers (required for `local`).
        timeout: seconds each batch command may take.

    Raises:
        ValueError: unknown name, or `local` without a nursery.
    """
    name = manager.lower()
    if name == "slurm":
        from hqpy.autoalloc.backends.slurm import SlurmBackend

        return SlurmBackend(timeout=timeout)
    if name == "pbs":
        from hqpy.autoalloc.backends.pbs import PbsBackend

        return PbsBackend(timeout=timeout)
    if name == "local":
        if nursery is None:
            raise ValueError("the local backend needs a nursery for its allocations")
        from hqpy.autoalloc.backends.local import LocalBackend

        return LocalBackend(nursery, timeout=timeout)
    plugin = _plugins().get(name)
    if plugin is None:
        choices = ", ".join(available_backends())
        raise ValueError(f"unknown backend {manager!r}; choose one of: {choices}")
    factory: Callable[..., BatchBackend] = plugin.load()
    return factory(nursery=nursery, timeout=timeout)
