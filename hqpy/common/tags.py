"""Tags on tasks, filter tags on workers and queues (Balsam's filter tags, Bpipe's pool configs).

A tag is a bare name (`gpu`) or `key=value` (`system=H2O`). A worker (or a queue's workers) with
filter tags runs only tasks that carry all of them; one without filter tags runs any task.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TAG_LENGTH = 256
MAX_TAGS = 64
MAX_TAG_SETS = 1000
"""Distinct tag sets in one submit: each becomes a task group, and the scheduler visits every
waiting group on each pass, so 100,000 of them would slow every scheduling pass to a crawl."""

_TAG_RE = re.compile(r"[A-Za-z0-9_.:/+-]+(=[^\s\x00,]*)?", re.ASCII)


def parse_tag(text: str) -> str:
    """Check one `--tag`/`--filter-tag` value; ValueError names what is wrong."""
    if not text:
        raise ValueError("a tag cannot be empty; use NAME or KEY=VALUE, e.g. --tag system=H2O")
    if len(text) > MAX_TAG_LENGTH:
        raise ValueError(f"tag is {len(text)} characters long; at most {MAX_TAG_LENGTH} allowed")
    if not _TAG_RE.fullmatch(text):
        raise ValueError(
            f"invalid tag {text!r}: use NAME or KEY=VALUE, where NAME and KEY are letters, digits "
            "or _.:/+- and VALUE has no spaces or commas, e.g. --tag system=H2O"
        )
    return text


def parse_tags(texts: Iterable[str]) -> frozenset[str]:
    tags = frozenset(parse_tag(t) for t in texts)
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags given; at most {MAX_TAGS} are allowed")
    return tags


def check_tag_sets(base: Iterable[str], per_task: Iterable[Iterable[str]]) -> None:
    """Refuse a submit whose tasks (each with `base` plus its own tags) have more than
    MAX_TAGS tags or more than MAX_TAG_SETS distinct tag sets; ValueError names the limit."""
    common = frozenset(base)
    sets: set[frozenset[str]] = set()
    for tags in per_task:
        full = common.union(tags) if tags else common
        if len(full) > MAX_TAGS:
            raise ValueError(
                f"a task would carry {len(full)} tags with --tag and its own hq_tags; "
                f"at most {MAX_TAGS} are allowed"
            )
        sets.add(full)
        if len(sets) > MAX_TAG_SETS:
            raise ValueError(
                f"the tasks carry more than {MAX_TAG_SETS} distinct tag sets; give tasks that "
                "should run on the same workers the same hq_tags (at most "
                f"{MAX_TAG_SETS} different sets per submit)"
            )


def runs(filter_tags: frozenset[str], task_tags: frozenset[str]) -> bool:
    """May a worker with these filter tags run a task with these tags?"""
    return filter_tags <= task_tags


def missing(filter_tags: frozenset[str], task_tags: frozenset[str]) -> list[str]:
    """The filter tags the task lacks, sorted (for the fit check's and explain's messages)."""
    return sorted(filter_tags - task_tags)
