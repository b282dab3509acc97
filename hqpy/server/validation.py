"""Checks of client requests before they change anything: a bad request is refused with one
line naming what is wrong, so no client (nor a hand-written one) can poison the workers."""

from __future__ import annotations

from hqpy.common.errors import RequestError
from hqpy.common.idset import IdSet
from hqpy.common.tags import check_tag_sets, parse_tags
from hqpy.protocol import messages as m
from hqpy.server.selection import parse_ids


def validate_submit(desc: m.SubmitDesc) -> IdSet:
    """The task ids of a submit, once the submit is known to be runnable."""
    if not desc.request.entries and desc.request.n_nodes == 0:
        raise RequestError("A task must request some resources (at least `--cpus 1`)")
    if desc.request.entries and desc.request.n_nodes > 0:
        raise RequestError(
            "A multi-node task (--nodes) takes whole workers and cannot request resources"
        )
    if not desc.args:
        raise RequestError("A task needs a program to run")
    for i, arg in enumerate(desc.args):
        if "\0" in arg:
            raise RequestError(f"Argument {i} of the task contains a NUL character")
    for key, value in desc.env.items():
        if not key or "=" in key or "\0" in key:
            raise RequestError(
                f"Invalid environment variable name {key!r}: it must be non-empty and contain "
                "neither `=` nor a NUL character"
            )
        if "\0" in value:
            raise RequestError(f"The value of environment variable {key} contains a NUL character")
    for name, path in (("cwd", desc.cwd), ("stdout", desc.stdout), ("stderr", desc.stderr)):
        if path is not None and "\0" in path:
            raise RequestError(f"The task's {name} path contains a NUL character")
    try:
        parse_tags(desc.tags)
    except ValueError as e:
        raise RequestError(f"--tag: {e}") from None
    if desc.task_tags is not None:
        if desc.entries is None or len(desc.task_tags) != len(desc.entries):
            raise RequestError("Task tags must be given for each entry, and only with entries")
        for i, tags in enumerate(desc.task_tags):
            try:
                parse_tags(tags)
            except ValueError as e:
                raise RequestError(f"Tags of entry {i}: {e}") from None
    ids = parse_ids(desc.ids)
    if desc.entries is not None and ids and ids.max() >= len(desc.entries):
        raise RequestError(
            f"Task id {ids.max()} has no entry: there are only {len(desc.entries)} entries"
        )
    if desc.task_tags is not None:
        task_tags = desc.task_tags
        try:
            check_tag_sets(desc.tags, (task_tags[i] for i in ids))
        except ValueError as e:
            raise RequestError(f"--from-json: {e}") from None
    return ids
