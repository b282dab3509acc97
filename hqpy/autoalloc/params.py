"""Checking a queue's parameters, and turning them into one allocation's submit request."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import attrs

from hqpy.autoalloc.backends import registry
from hqpy.autoalloc.backends.base import AllocationRequest, ScriptSetup
from hqpy.autoalloc.backends.common import allocation_name, build_worker_command, quote_double
from hqpy.autoalloc.partitions import parse_splits
from hqpy.autoalloc.planner import declared_resources, memory_resource
from hqpy.autoalloc.templates import TemplateError, check_template
from hqpy.common.errors import RequestError
from hqpy.common.tags import parse_tag
from hqpy.protocol.messages import QueueParams


class AllocError(RequestError):
    """A request about queues that cannot be done; the message is shown to the user."""


SPLIT_MANAGERS = ("local", "slurm", "pbs")
"""Backends whose scripts lay workers out in `--split` parts."""

LOG_VARIABLES = ("HQPY_LOG", "RUST_LOG")
"""The server's logging variables, passed on to the workers of its allocations (#14.10)."""

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def hq_argv(python: str | None = None) -> list[str]:
    """How a worker started by an allocation runs this same `hq` (with `python`: that
    interpreter runs `-m hqpy`)."""
    if python is not None:
        return [python, "-m", "hqpy"]
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
    if params.preallocate < 0:
        raise AllocError("Preallocate has to be at least 0 (0: not a pool)")
    if params.persist and params.preallocate < 1:
        raise AllocError("--persist needs --preallocate N (the pool's size)")
    if params.memory is not None and params.memory < 2**20:
        raise AllocError("Memory has to be at least 1 MiB")
    from hqpy.autoalloc.backends.sge import PE_ENV  # not for every `hq alloc` command

    pe_error = parallel_environment_error(params, os.environ.get(PE_ENV))
    if pe_error is not None:
        raise AllocError(pe_error)
    for tag in params.filter_tags:
        try:
            parse_tag(tag)
        except ValueError as e:
            raise AllocError(f"Invalid filter tag: {e}") from None
    if params.worker_time_limit is not None and params.worker_time_limit > params.time_limit:
        raise AllocError("Worker time limit cannot be larger than queue time limit")
    try:
        declared_resources(params)
    except ValueError as e:
        raise AllocError(f"Invalid worker resources: {e}") from None
    validate_environment(params)
    # --- splits (issue 11) ---
    error = split_error(params)
    if error is not None:
        raise AllocError(error)


def parallel_environment_error(params: QueueParams, server_default: str | None) -> str | None:
    """Why `--pe` is wrong, or missing where Grid Engine needs it (`server_default`: the
    server's `HQPY_SGE_PE`), or None."""
    pe = params.parallel_environment
    if params.manager != "sge":
        if pe is not None:
            return f"--pe is a Grid Engine option; queue manager `{params.manager}` has none"
        return None
    if pe is not None and not _PE_NAME.fullmatch(pe):
        return f"--pe `{pe}` is not a parallel environment name (letters, digits, `_.-`)"
    if params.workers_per_alloc > 1 and not (pe or server_default):
        return (
            f"an allocation of {params.workers_per_alloc} workers on Grid Engine needs a "
            "parallel environment: add `--pe NAME` (one of `qconf -spl`)"
        )
    return None


def split_error(params: QueueParams) -> str | None:
    """Why the queue's `--split`s cannot be used, or None; the CLI checks it before sending
    (a usage error) and the server again for hand-written clients."""
    if not params.splits:
        return None
    try:
        parse_splits(params.splits, params.workers_per_alloc)
    except ValueError as e:
        return f"Invalid --split: {e}"
    if params.script_template is not None:
        return (
            "--split cannot be combined with --script-template "
            "(the template replaces the script that lays out the parts)"
        )
    if params.manager not in SPLIT_MANAGERS:
        return (
            f"--split is supported by the {', '.join(SPLIT_MANAGERS)} backends, "
            f"not by {params.manager}"
        )
    return None


def parse_worker_env(item: str) -> tuple[str, str]:
    """`KEY=VALUE` of `--worker-env`. Raises `ValueError` naming what is wrong."""
    key, sep, value = item.partition("=")
    if not sep or not _ENV_KEY.fullmatch(key):
        raise ValueError(
            f"`{item}` is not KEY=VALUE with a variable name as KEY (e.g. `OMP_NUM_THREADS=4`)"
        )
    return key, value


def validate_environment(params: QueueParams) -> None:
    """The worker environment options: a missing env script or interpreter is an error now,
    not a failed allocation at 3 a.m."""
    if params.env_script is not None and not os.path.isfile(params.env_script):
        raise AllocError(
            f"Env script `{params.env_script}` does not exist; give the path of a bash file "
            "to source before the worker starts"
        )
    for item in params.worker_env:
        try:
            parse_worker_env(item)
        except ValueError as e:
            raise AllocError(f"Invalid --worker-env: {e}") from None
    if params.python is not None:
        found = shutil.which(params.python)
        if found is None:
            raise AllocError(
                f"Python interpreter `{params.python}` was not found or is not executable; "
                "give its path (or a name on PATH such as `python3`)"
            )
    if params.worker_dir is not None and not os.path.isabs(params.worker_dir):
        raise AllocError(f"Worker dir `{params.worker_dir}` must be an absolute path")
    if params.script_template is not None or params.template_params:
        try:
            check_template(params.script_template or "", params.template_params)
        except TemplateError as e:
            raise AllocError(f"Invalid script template: {e}") from None


def script_setup(params: QueueParams, instance_dir: Path, env: dict[str, str]) -> ScriptSetup:
    """The exit trap, environment and directory of the queue's allocation scripts."""
    report = (
        f"{shlex.join(hq_argv(params.python))} worker report-end "
        f"--server-dir {quote_double(str(instance_dir))}"
    )
    exports = [(name, env[name]) for name in LOG_VARIABLES if env.get(name)]
    exports += [parse_worker_env(item) for item in params.worker_env]
    return ScriptSetup(
        report_command=report,
        env_script=params.env_script,
        exports=tuple(exports),
        worker_dir=params.worker_dir,
    )


def memory_args(manager: str, memory: int | None) -> tuple[str, ...]:
    """`memory` (bytes) in the batch system's own syntax, as extra directive arguments (a
    plug-in backend gets none: give it with `-- ...`)."""
    if memory is None:
        return ()
    mib = max(1, memory // 2**20)
    return {
        "slurm": (f"--mem={mib}M",),
        "pbs": (f"-l mem={mib}mb",),
        "lsf": (f"-R rusage[mem={mib}]",),
        "htcondor": (f"request_memory = {mib}",),
        "sge": (f"-l h_vmem={mib}M,mem_free={mib}M",),
    }.get(manager.lower(), ())


def worker_params(params: QueueParams) -> QueueParams:
    """The options the queue's workers are started with: `memory` becomes their `mem`
    resource, and a persistent pool's workers ignore the idle timeout (it is set to their
    time limit, which ends them first)."""
    mem = memory_resource(params)
    if mem is not None:
        params = attrs.evolve(params, resources=(*params.resources, mem))
    if params.preallocate > 0 and params.persist:
        limit = params.worker_time_limit
        params = attrs.evolve(params, idle_timeout=params.time_limit if limit is None else limit)
    return params


def allocation_request(
    params: QueueParams,
    queue_id: int,
    seq: int,
    workers: int,
    workdir: Path,
    *,
    instance_dir: Path,
    cpus_override: str | None = None,
    dry_run: bool = False,
) -> AllocationRequest:
    """What the backend renders into the allocation's `hq-submit.sh`.

    Args:
        cpus_override: `--cpus` for workers of a queue without one, from a backend that
            shares this machine (`SharesHost.worker_cpus`).
    """
    command = build_worker_command(
        worker_params(params),
        hq_argv=hq_argv(params.python),
        server_dir=instance_dir,
        manager=params.manager,
        hqpy_log=None,  # exported by the script's set-up, with `RUST_LOG`
        cpus_override=cpus_override,
    )
    return AllocationRequest(
        queue_id=queue_id,
        seq=seq,
        name=allocation_name(queue_id, seq, params.name),
        worker_count=workers,
        time_limit=params.time_limit,
        additional_args=(*params.additional_args, *memory_args(params.manager, params.memory)),
        worker_command=command,
        workdir=workdir,
        dry_run=dry_run,
        setup=script_setup(params, instance_dir, dict(os.environ)),
        splits=params.splits,
        parallel_environment=params.parallel_environment,
    )
