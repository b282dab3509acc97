"""Reading an hqpy TOML file into queues and concurrency pools. Pure: no I/O but reading the
file (and a script template it names), so every error path is a unit test.

Everything is checked before anything is returned: a bad file changes nothing. Each error
names the file, the key path and what is wrong, e.g.
`hqpy.toml: preallocate.small.walltime: "8 hours and a bit" is not a duration`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import attrs
import humanfriendly  # type: ignore[import-untyped]
import tomli

from hqpy.common.durations import parse_duration
from hqpy.common.resources import parse_descriptor, parse_resource_arg
from hqpy.common.tags import parse_tag
from hqpy.protocol.messages import QueueParams

MAX_TEMPLATE_BYTES = 256 * 1024
_DURATION_HINT = ' (e.g. "8:00:00" or "90m")'


class ConfigError(ValueError):
    """One line: `FILE: KEY.PATH: what is wrong`."""


@attrs.frozen
class Config:
    queues: tuple[QueueParams, ...] = ()
    """`[queue.NAME]` then `[preallocate.NAME]`, in file order."""
    pools: tuple[tuple[str, int], ...] = ()
    """`[pools]`: NAME = SIZE, in file order."""


class _Bad(Exception):
    """What is wrong with one value; the caller adds the file and key path."""


Convert = Callable[[object, Path], object]


def _string(value: object, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"{_show(value)} is not a non-empty string")
    return value


def _int(minimum: int) -> Convert:
    def convert(value: object, base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"{_show(value)} is not a whole number")
        if value < minimum:
            raise _Bad(f"{value} is less than {minimum}")
        return value

    return convert


def _bool(value: object, base: Path) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{_show(value)} is not true or false")
    return value


def _duration(value: object, base: Path) -> float:
    """`"8:00:00"`, `"90m"`, `"1h 30m"`, `"8 hours"`, or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError:
            try:
                seconds = float(humanfriendly.parse_timespan(value))
            except humanfriendly.InvalidTimespan:
                raise _Bad(f"{_show(value)} is not a duration{_DURATION_HINT}") from None
    else:
        raise _Bad(f"{_show(value)} is not a duration{_DURATION_HINT}")
    if seconds <= 0:
        raise _Bad(f"{_show(value)} is not a positive duration")
    return seconds


def _size(value: object, base: Path) -> int:
    """Binary: `"16g"` and `"16GB"` are 16 GiB, as the batch systems read `--mem=16G`."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        try:
            size = int(humanfriendly.parse_size(value, binary=True))
        except humanfriendly.InvalidSize:
            raise _Bad(f'{_show(value)} is not a size (e.g. "16g" or "512MiB")') from None
    else:
        raise _Bad(f'{_show(value)} is not a size (e.g. "16g" or "512MiB")')
    if size < 2**20:
        raise _Bad(f"{_show(value)} is less than 1 MiB")
    return size


def _fraction(value: object, base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise _Bad(f"{_show(value)} is not a number between 0 and 1")
    return float(value)


def _choice(*choices: str) -> Convert:
    def convert(value: object, base: Path) -> str:
        if value not in choices:
            raise _Bad(f"{_show(value)} is not one of {', '.join(choices)}")
        return str(value)

    return convert


def _strings(value: object, base: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Bad(f"{_show(value)} is not a list of strings")
    return tuple(value)


def _tags(value: object, base: Path) -> tuple[str, ...]:
    tags = _strings(value, base)
    for tag in tags:
        try:
            parse_tag(tag)
        except ValueError as e:
            raise _Bad(str(e)) from None
    return tuple(dict.fromkeys(tags))


def _cpus(value: object, base: Path) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    text = _string(text, base)
    try:
        parse_descriptor("cpus", text)
    except ValueError as e:
        raise _Bad(str(e)) from None
    return text


def _resources(value: object, base: Path) -> tuple[str, ...]:
    """A list of `NAME=DEF` strings, or a table NAME = DEF."""
    if isinstance(value, dict):
        items = tuple(f"{k}={v}" for k, v in value.items())
    else:
        items = _strings(value, base)
    for item in items:
        try:
            parse_descriptor(*parse_resource_arg(item))
        except ValueError as e:
            raise _Bad(str(e)) from None
    return items


def _pairs(value: object, base: Path) -> tuple[str, ...]:
    """`KEY=VALUE` strings, from a list of them or a table."""
    if isinstance(value, dict):
        return tuple(f"{k}={v}" for k, v in value.items())
    items = _strings(value, base)
    for item in items:
        if "=" not in item:
            raise _Bad(f"{_show(item)} is not KEY=VALUE")
    return items


def _path(value: object, base: Path) -> str:
    """Relative to the file's directory; `~` is expanded."""
    text = _string(value, base)
    return str((base / os.path.expanduser(text)).resolve())


def _template(value: object, base: Path) -> str:
    path = Path(_path(value, base))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_TEMPLATE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise _Bad(f"cannot read {path}: {e}") from None
    if len(text) > MAX_TEMPLATE_BYTES:
        raise _Bad(f"{path} is larger than {MAX_TEMPLATE_BYTES // 1024} KiB")
    return text


QUEUE_KEYS: dict[str, tuple[str, Convert]] = {
    "manager": ("manager", _string),
    "time_limit": ("time_limit", _duration),
    "backlog": ("backlog", _int(1)),
    "workers_per_alloc": ("workers_per_alloc", _int(1)),
    "max_worker_count": ("max_worker_count", _int(1)),
    "name": ("name", _string),
    "idle_timeout": ("idle_timeout", _duration),
    "worker_time_limit": ("worker_time_limit", _duration),
    "worker_start_cmd": ("worker_start_cmd", _string),
    "worker_stop_cmd": ("worker_stop_cmd", _string),
    "worker_wrap_cmd": ("worker_wrap_cmd", _string),
    "on_server_lost": ("on_server_lost", _choice("stop", "finish-running")),
    "cpus": ("cpus", _cpus),
    "resource": ("resources", _resources),
    "group": ("group", _string),
    "coupling": ("coupling", _string),
    "no_hyper_threading": ("no_hyper_threading", _bool),
    "detect_resources": ("detect_resources", _string),
    "overview_interval": ("overview_interval", _duration),
    "min_utilization": ("min_utilization", _fraction),
    "env_script": ("env_script", _path),
    "worker_env": ("worker_env", _pairs),
    "python": ("python", _string),
    "worker_dir": ("worker_dir", _path),
    "script_template": ("script_template", _template),
    "template_params": ("template_params", _pairs),
    "args": ("additional_args", _strings),
    "filter_tag": ("filter_tags", _tags),
    "preallocate": ("preallocate", _int(0)),
    "persist": ("persist", _bool),
    "memory": ("memory", _size),
    "pe": ("parallel_environment", _string),
}
"""`[queue.NAME]` keys: the `hq alloc add` options with `_` for `-` (`--resource` and
`--filter-tag` take a list; `args` is what follows `--`)."""
if "splits" in attrs.fields_dict(QueueParams):
    # `--split KIND:COUNT[:TAG,...]` (issue 11, multi-node): checked by the server as
    # `hq alloc add` checks it.
    QUEUE_KEYS["split"] = ("splits", _strings)

POOL_KEYS: dict[str, tuple[str, Convert]] = {
    **{k: v for k, v in QUEUE_KEYS.items() if k != "preallocate"},
    "jobs": ("preallocate", _int(1)),
    "walltime": ("time_limit", _duration),
    "configs": ("filter_tags", _tags),
}
"""`[preallocate.NAME]` keys (Bpipe's): the queue keys, with `jobs`, `walltime` and
`configs` for `preallocate`, `time_limit` and `filter_tag`."""

TOP_KEYS = ("queue", "preallocate", "pools")


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _unknown(key: str, valid: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return f"unknown key; {hint}"


SplitCheck = Callable[[QueueParams], str | None]
"""Why a queue's `split` cannot be used (`hqpy.autoalloc.params.split_error`), or None."""


def load_file(
    path: str | Path, managers: Collection[str] = (), split_error: SplitCheck | None = None
) -> Config:
    """Read and check a configuration file. Raises `ConfigError`."""
    shown = str(path)
    try:
        with open(path, "rb") as f:
            data = tomli.load(f)
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read the configuration: {e.strerror or e}") from None
    except tomli.TOMLDecodeError as e:
        raise ConfigError(f"{shown}: not valid TOML: {e}") from None
    return parse(data, shown, Path(path).resolve().parent, managers, split_error)


def load_text(
    text: str,
    shown: str,
    base: Path,
    managers: Collection[str] = (),
    split_error: SplitCheck | None = None,
) -> Config:
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        raise ConfigError(f"{shown}: not valid TOML: {e}") from None
    return parse(data, shown, base, managers, split_error)


def parse(
    data: Mapping[str, object],
    shown: str,
    base: Path,
    managers: Collection[str] = (),
    split_error: SplitCheck | None = None,
) -> Config:
    """The checked configuration of a parsed TOML document.

    Args:
        shown: the file name as errors show it.
        base: the directory relative paths (env_script, worker_dir, ...) start from.
        managers: the valid `manager` values (empty: not checked here).
        split_error: the allocator's check of `split` (None: checked when the queue is added).
    """

    def fail(key: str, what: str) -> ConfigError:
        return ConfigError(f"{shown}: {key}: {what}")

    for key in data:
        if key not in TOP_KEYS:
            raise fail(key, _unknown(key, TOP_KEYS))
    queues: list[QueueParams] = []
    names: dict[str, str] = {}
    for section, keys in (("queue", QUEUE_KEYS), ("preallocate", POOL_KEYS)):
        tables = data.get(section, {})
        if not isinstance(tables, dict):
            raise fail(section, f"is {_show(tables)}, not a table of [{section}.NAME] tables")
        for name, table in tables.items():
            where = f"{section}.{name}"
            if not isinstance(table, dict):
                raise fail(where, f"is {_show(table)}, not a table")
            params = _queue(table, where, name, section == "preallocate", keys, base, fail)
            if managers and params.manager not in managers:
                raise fail(
                    f"{where}.manager",
                    f"{_show(params.manager)} is not one of {', '.join(managers)}",
                )
            problem = split_error(params) if split_error is not None else None
            if problem is not None:
                raise fail(f"{where}.split", problem.removeprefix("Invalid --split: "))
            label = params.name or name
            if label in names:
                raise fail(f"{where}.name", f'"{label}" is also the name of {names[label]}')
            names[label] = where
            queues.append(params)
    pools = data.get("pools", {})
    if not isinstance(pools, dict):
        raise fail("pools", f"is {_show(pools)}, not a table of NAME = SIZE")
    pool_list: list[tuple[str, int]] = []
    for name, size in pools.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise fail(f"pools.{name}", f"{_show(size)} is not a pool size (a whole number >= 1)")
        pool_list.append((name, size))
    return Config(tuple(queues), tuple(pool_list))


def _queue(
    table: Mapping[str, object],
    where: str,
    name: str,
    pool: bool,
    keys: Mapping[str, tuple[str, Convert]],
    base: Path,
    fail: Callable[[str, str], ConfigError],
) -> QueueParams:
    fields: dict[str, Any] = {}  # `Any`: the values of every QueueParams field, by name
    for key, value in table.items():
        spec = keys.get(key)
        if spec is None:
            raise fail(f"{where}.{key}", _unknown(key, keys))
        field, convert = spec
        if field in fields:
            raise fail(f"{where}.{key}", f"repeats `{field}` given by another key")
        try:
            fields[field] = convert(value, base)
        except _Bad as e:
            raise fail(f"{where}.{key}", str(e)) from None
    limit_key = "walltime" if pool else "time_limit"
    for required, field in (("manager", "manager"), (limit_key, "time_limit")):
        if field not in fields:
            raise fail(where, f"`{required}` is missing")
    limit = fields.get("worker_time_limit")
    if limit is not None and limit > fields["time_limit"]:
        raise fail(f"{where}.worker_time_limit", f"is longer than `{limit_key}`")
    if fields.get("persist") and not fields.get("preallocate"):
        raise fail(f"{where}.persist", "needs `preallocate` (the pool's size)")
    if pool:
        fields.setdefault("preallocate", 1)
        fields.setdefault("filter_tags", (name,))  # Bpipe: no configs, the name is the config
    fields.setdefault("name", name)
    return QueueParams(**fields)
