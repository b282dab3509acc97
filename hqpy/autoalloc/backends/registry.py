"""Backend names (`hq alloc add <manager>`) to backend objects, built-ins and plug-ins.

Third parties add a batch system without touching hqpy by declaring an entry point in the
group `hqpy.backends`, whose object is a factory called as
`factory(nursery=<trio.Nursery>, timeout=<seconds>, observer=<callable or None>)` and
returning a `BatchBackend` (`observer` is passed only when set, so older plug-ins work), e.g.

    [project.entry-points."hqpy.backends"]
    lsf = "my_package.lsf:LsfBackend"

A built-in name always wins over a plug-in of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: the CLI reads `names()` and must stay cheap to import.
    import trio

    from hqpy.autoalloc.backends.base import BatchBackend
    from hqpy.autoalloc.backends.runner import CommandObserver

ENTRY_POINT_GROUP = "hqpy.backends"

BUILTIN_BACKENDS = ("slurm", "pbs", "local", "lsf", "htcondor", "sge")


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """The names `hq alloc add <manager>` accepts (what the CLI's choices, validation and docs
    read): the built-ins, then installed plug-ins."""
    extra = sorted(name for name in _plugins() if name not in BUILTIN_BACKENDS)
    return [*BUILTIN_BACKENDS, *extra]


def make_backend(
    manager: str,
    *,
    nursery: trio.Nursery | None = None,
    timeout: float = 30.0,
    observer: CommandObserver | None = None,
) -> BatchBackend:
    """The backend for `manager` (one of `names()`).

    Args:
        nursery: where the local backend runs its allocation watchers (required for `local`).
        timeout: seconds each batch command may take.
        observer: told of every batch command the backend runs (`BatchCommandRun`), e.g.
            the event hub's `publish`.

    Raises:
        ValueError: unknown name, or `local` without a nursery.
    """
    name = manager.lower()
    if name == "local":
        if nursery is None:
            raise ValueError("the local backend needs a nursery for its allocations")
        from hqpy.autoalloc.backends.local import LocalBackend

        return LocalBackend(nursery, timeout=timeout, observer=observer)
    script_backend = _script_backend(name)
    if script_backend is not None:
        return script_backend(timeout=timeout, observer=observer)
    plugin = _plugins().get(name)
    if plugin is None:
        choices = ", ".join(names())
        raise ValueError(f"unknown backend {manager!r}; choose one of: {choices}")
    factory: Callable[..., BatchBackend] = plugin.load()
    if observer is None:
        return factory(nursery=nursery, timeout=timeout)
    return factory(nursery=nursery, timeout=timeout, observer=observer)


def _script_backend(name: str) -> Callable[..., BatchBackend] | None:
    """The class of a built-in batch-system backend (imported on demand)."""
    if name == "slurm":
        from hqpy.autoalloc.backends.slurm import SlurmBackend

        return SlurmBackend
    if name == "pbs":
        from hqpy.autoalloc.backends.pbs import PbsBackend

        return PbsBackend
    if name == "lsf":
        from hqpy.autoalloc.backends.lsf import LsfBackend

        return LsfBackend
    if name == "htcondor":
        from hqpy.autoalloc.backends.htcondor import HtcondorBackend

        return HtcondorBackend
    if name == "sge":
        from hqpy.autoalloc.backends.sge import SgeBackend

        return SgeBackend
    return None
