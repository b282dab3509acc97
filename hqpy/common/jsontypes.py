"""JSON documents as a recursive type, so that output documents and parsers are type-checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

JsonValue: TypeAlias = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
"""What `json.loads` returns and `json.dumps` takes."""

JsonObject: TypeAlias = dict[str, JsonValue]
"""A JSON object: output documents and records read from other programs."""


JsonOut: TypeAlias = None | bool | int | float | str | Sequence["JsonOut"] | Mapping[str, "JsonOut"]
"""A value to write with `json.dumps`: read-only containers, so `dict[str, int]` is one too
(`dict` and `list` are invariant, which would reject it as a `JsonValue`)."""

JsonOutObject: TypeAlias = dict[str, JsonOut]
"""An output document under construction (cli `json` mode, HTTP responses)."""


class JsonShapeError(ValueError):
    """A JSON document from another program does not have the shape we read."""


def expect_object(value: JsonValue, what: str) -> JsonObject:
    """`value` as an object, or a clear error naming `what` was expected."""
    if not isinstance(value, dict):
        raise JsonShapeError(f"{what}: expected a JSON object, got {_kind(value)}")
    return value


def expect_list(value: JsonValue, what: str) -> list[JsonValue]:
    """`value` as an array, or a clear error naming `what` was expected."""
    if not isinstance(value, list):
        raise JsonShapeError(f"{what}: expected a JSON array, got {_kind(value)}")
    return value


def _kind(value: JsonValue) -> str:
    return "null" if value is None else type(value).__name__
