"""`%{NAME}` placeholders in task paths, resolved per task on the worker.

`fill_placeholders` runs once per task and path, so a template without `%{` returns at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KNOWN = ("JOB_ID", "TASK_ID", "INSTANCE_ID", "SUBMIT_DIR", "CWD", "SERVER_UID")

_PLACEHOLDER_RE = re.compile(r"%\{([^{}]*)\}")


def fill_placeholders(template: str, values: Mapping[str, str]) -> str:
    """Replaces `%{NAME}` by `values[NAME]`; names without a value stay as written."""
    if "%{" not in template:
        return template

    def replace(match: re.Match[str]) -> str:
        value = values.get(match[1])
        return match[0] if value is None else value

    return _PLACEHOLDER_RE.sub(replace, template)


def unknown_placeholders(template: str) -> list[str]:
    """Names in `template` that HQ would not replace, in order of first appearance."""
    if "%{" not in template:
        return []
    seen: dict[str, None] = {}
    for name in _PLACEHOLDER_RE.findall(template):
        if name not in KNOWN:
            seen.setdefault(name)
    return list(seen)


def has_placeholder(template: str, name: str) -> bool:
    """Whether `%{name}` occurs (e.g. warn when array outputs lack `%{TASK_ID}`)."""
    return f"%{{{name}}}" in template
