"""Allocation script templates (`hq alloc add --script-template FILE -x key=value`).

A template is a `string.Template` that replaces the built-in script of a backend (Balsam's
job templates): a site that needs its own modules, partitions or launch lines writes the
script once, and hqpy fills in what it computes for each allocation. The parts come from the
backend's own rendering, so a template works with every backend, plug-ins included:

- `$directives`: the backend's directive lines (`#SBATCH ...`, `#PBS ...`), without `#!`;
- `$env_setup`: the exit trap that reports the allocation's end, `--env-script`, the
  exported variables (`HQPY_LOG`, `RUST_LOG`, `--worker-env`) and `cd` to `--worker-dir`;
- `$worker_command`: the line(s) that start the workers (with `srun`/`pbsdsh`/... for several);
- `$walltime` (`HH:MM:SS`), `$time_limit_seconds`, `$node_count`, `$queue_name`,
  `$allocation_name`, `$allocation_dir`;
- and every `-x key=value` as `$key`.
"""

from __future__ import annotations

import re
import string

import attrs

from hqpy.autoalloc.backends.base import AllocationRequest, BatchBackend, ScriptSetup
from hqpy.common.durations import format_hms
from hqpy.protocol.messages import QueueParams

BUILTIN_PLACEHOLDERS = (
    "directives",
    "env_setup",
    "worker_command",
    "walltime",
    "time_limit_seconds",
    "node_count",
    "queue_name",
    "allocation_name",
    "allocation_dir",
)

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(ValueError):
    """A template or `-x` parameter that cannot be used; the message names it."""


def parse_template_params(items: tuple[str, ...]) -> dict[str, str]:
    """`-x key=value` items as a dict. Raises `TemplateError`."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise TemplateError(f"-x `{item}` is not key=value with a name as key (`-x acct=p1`)")
        if key in BUILTIN_PLACEHOLDERS:
            raise TemplateError(f"-x `{key}` would hide the built-in placeholder `${key}`")
        values[key] = value
    return values


def check_template(text: str, items: tuple[str, ...]) -> None:
    """Every placeholder of the template is built in or given with `-x`. Raises
    `TemplateError` naming the first that is not (or the malformed `$`)."""
    values = parse_template_params(items)
    template = string.Template(text)
    for match in template.pattern.finditer(text):
        if match.group("invalid") is not None:
            line = text.count("\n", 0, match.start("invalid")) + 1
            raise TemplateError(
                f"script template line {line}: a `$` that starts no placeholder "
                "(write `$$` for a literal `$`)"
            )
    for name in template.get_identifiers():
        if name not in BUILTIN_PLACEHOLDERS and name not in values:
            raise TemplateError(
                f"script template uses `${name}`, which is not a built-in placeholder "
                f"({', '.join('$' + p for p in BUILTIN_PLACEHOLDERS)}); "
                f"give it with `-x {name}=VALUE`"
            )


def _split_parts(full: str, bare: str) -> tuple[str, str, str]:
    """(directives, env set-up, worker command) of a backend's script, from its rendering with
    (`full`) and without (`bare`) the set-up: what `full` has more is the set-up."""
    start = 0
    while start < min(len(full), len(bare)) and full[start] == bare[start]:
        start += 1
    end = 0
    while end < len(bare) - start and full[len(full) - 1 - end] == bare[len(bare) - 1 - end]:
        end += 1
    setup = full[start : len(full) - end]
    head, _, body = bare.partition("\n\n")
    lines = head.splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    return "\n".join(lines), setup.rstrip("\n"), body.rstrip("\n")


def render_allocation_script(
    backend: BatchBackend, request: AllocationRequest, params: QueueParams
) -> str:
    """The backend's own script, or the queue's template filled in from its parts."""
    full = backend.render_script(request)
    if params.script_template is None:
        return full
    bare = backend.render_script(attrs.evolve(request, setup=ScriptSetup()))
    directives, env_setup, worker_command = _split_parts(full, bare)
    values = {
        **parse_template_params(params.template_params),
        "directives": directives,
        "env_setup": env_setup,
        "worker_command": worker_command,
        "walltime": format_hms(request.time_limit),
        "time_limit_seconds": f"{request.time_limit:g}",
        "node_count": str(request.worker_count),
        "queue_name": params.name or str(request.queue_id),
        "allocation_name": request.name,
        "allocation_dir": str(request.workdir),
    }
    return string.Template(params.script_template).substitute(values)
