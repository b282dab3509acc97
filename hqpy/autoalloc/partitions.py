"""Partitioned allocations (Balsam's partitions): `--split KIND:COUNT[:TAG,...]`, repeatable.

One allocation of `--workers-per-alloc` nodes starts its workers in parts: an `mpi` part's
workers form one worker group (multi-node tasks run inside it), a `serial` part runs one worker
per node, each its own group (single-node tasks only). A part's tags become its workers'
filter tags. Each worker learns its part from `HQPY_SPLIT=<index>:<kind>[:<tags>]`, which the
script sets on the part's line; `hq worker start` derives its group and filter tags from it
(`worker_group`), so the worker command stays the queue's one command.

How each backend lays the parts on the nodes:
- local: one background loop of workers per part (`render_local`);
- Slurm: one `srun --nodes=K --relative=OFFSET` per part, in the background (`render_slurm`);
- PBS: the distinct hosts of `$PBS_NODEFILE`, cut into ranges, one `pbsdsh -h HOST` per node
  (`render_pbs`).
"""

from __future__ import annotations

import shlex

import attrs

from hqpy.common.tags import parse_tags

KINDS = ("mpi", "serial")
WAIT_ALL = [
    "status=0",
    'for pid in "${pids[@]}"; do',
    '    wait "$pid" || status=$?',
    "done",
    'exit "$status"',
]
"""The script's end: the worst exit status of the parts' launchers (a crash fails it)."""
SPLIT_ENV = "HQPY_SPLIT"


@attrs.frozen
class Split:
    kind: str
    count: int
    tags: tuple[str, ...] = ()

    def text(self) -> str:
        """As the user types it: `mpi:2:role=leader`."""
        base = f"{self.kind}:{self.count}"
        return f"{base}:{','.join(self.tags)}" if self.tags else base


def parse_split(text: str) -> Split:
    """One `--split` value. Raises ValueError naming what is wrong."""
    kind, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(
            f"invalid split `{text}`: use KIND:COUNT[:TAG,...], e.g. --split mpi:2:role=leader"
        )
    if kind not in KINDS:
        raise ValueError(f"invalid split `{text}`: unknown kind `{kind}`; use mpi or serial")
    count_text, _, tags_text = rest.partition(":")
    try:
        count = int(count_text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"invalid split `{text}`: the node count must be a positive integer")
    tags = sorted(parse_tags(t for t in tags_text.split(",") if t)) if tags_text else []
    return Split(kind, count, tuple(tags))


def parse_splits(texts: tuple[str, ...], workers_per_alloc: int) -> list[Split]:
    """Every `--split` of a queue; their node counts must add up to `--workers-per-alloc`.

    Raises:
        ValueError: a bad split, or counts that do not add up.
    """
    splits = [parse_split(t) for t in texts]
    total = sum(s.count for s in splits)
    if splits and total != workers_per_alloc:
        raise ValueError(
            f"the split node counts add up to {total}, but --workers-per-alloc is "
            f"{workers_per_alloc}; they must be equal"
        )
    return splits


def widest_group(texts: tuple[str, ...], workers_per_alloc: int) -> int:
    """The most workers of one group an allocation gives: its widest `mpi` part (1 if it has
    only serial parts), or all its workers without a split."""
    if not texts:
        return workers_per_alloc
    splits = [parse_split(t) for t in texts]
    return max((s.count for s in splits if s.kind == "mpi"), default=1)


def split_value(index: int, split: Split) -> str:
    return f"{index}:{split.kind}" + (f":{','.join(split.tags)}" if split.tags else "")


def worker_group(value: str, allocation_id: str | None, unique: str) -> tuple[str, list[str]]:
    """A worker's group and filter tags from its `HQPY_SPLIT` value.

    `unique` tells this worker from the others on its node and in its allocation (host and
    pid): a serial worker is a group of its own.

    Raises:
        ValueError: a malformed value.
    """
    index, _, rest = value.partition(":")
    kind, _, tags = rest.partition(":")
    if not index.isdigit() or kind not in KINDS:
        raise ValueError(f"invalid {SPLIT_ENV} value `{value}`: expected INDEX:KIND[:TAGS]")
    base = f"{allocation_id or 'default'}/{index}"
    group = base if kind == "mpi" else f"{base}/{unique}"
    return group, [t for t in tags.split(",") if t]


def _parts(texts: tuple[str, ...]) -> list[tuple[int, int, Split]]:
    """(index, offset of its first node, split) of each part."""
    out, offset = [], 0
    for index, text in enumerate(texts):
        split = parse_split(text)
        out.append((index, offset, split))
        offset += split.count
    return out


def _export(index: int, split: Split, command: str) -> str:
    return f"export {SPLIT_ENV}={shlex.quote(split_value(index, split))}; {command}"


def render_local(texts: tuple[str, ...], command: str) -> list[str]:
    """The body of a local allocation script that starts each part's workers."""
    lines = ["pids=()"]
    for index, _offset, split in _parts(texts):
        lines += [
            f"for i in $(seq {split.count}); do",
            f"    ( {_export(index, split, command)} ) &",
            '    pids+=("$!")',
            "done",
        ]
    return lines


def render_slurm(texts: tuple[str, ...], command: str) -> str:
    """One `srun` per part on its own node range, in the background; the script waits for all."""
    lines = []
    for index, offset, split in _parts(texts):
        inner = shlex.quote(_export(index, split, command))
        lines.append(
            f"srun --overlap --ntasks={split.count} --nodes={split.count} "
            f"--relative={offset} bash -c {inner} &"
        )
        lines.append('pids+=("$!")')
    return "\n".join(["pids=()", *lines, *WAIT_ALL])


def render_pbs(texts: tuple[str, ...], command: str) -> str:
    """The job's distinct hosts from `$PBS_NODEFILE`, cut into the parts' ranges; one
    `pbsdsh -h HOST` per node, in the background; the script waits for all."""
    lines = ["mapfile -t hq_nodes < <(awk '!seen[$0]++' \"$PBS_NODEFILE\")"]
    for index, offset, split in _parts(texts):
        inner = shlex.quote(_export(index, split, command))
        lines.append(
            f'for hq_node in "${{hq_nodes[@]:{offset}:{split.count}}}"; do '
            f'pbsdsh -h "$hq_node" -- bash -l -c {inner} & pids+=("$!"); done'
        )
    return "\n".join(["pids=()", *lines, *WAIT_ALL])
