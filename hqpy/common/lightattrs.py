"""`attrs.frozen` for classes that must be cheap to create: the wire messages.

Every `hq` call imports all message classes, and attrs compiles a repr, eq and hash script for
each (about half of their creation time). Here attrs generates only `__init__`; repr, eq and hash
are shared functions with the same results (the repr text is attrs's own format), so nothing
observable changes while a client starts ~10 ms sooner. Modules use it at run time only; type
checkers see `attrs` itself (`if TYPE_CHECKING: import attrs`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from attrs import Factory as Factory
from attrs import field as field

C = TypeVar("C", bound=type)


def frozen(maybe_cls: C | None = None, **options: Any) -> Any:  # `Any`: as `attrs.frozen`'s
    """`attrs.frozen` with repr, eq and hash set by `_finish` instead of generated code."""

    def wrap(cls: C) -> C:
        return _finish(attrs.frozen(cls, repr=False, eq=False, **options))

    return wrap if maybe_cls is None else wrap(maybe_cls)


def _finish(cls: C) -> C:
    fields = cls.__attrs_attrs__  # type: ignore[attr-defined]
    names = tuple(a.name for a in fields)
    values: Callable[[object], object] = operator.attrgetter(*names) if names else (lambda _: ())
    shown = tuple(a.name for a in fields if a.repr)
    name = cls.__qualname__.rsplit(">.", 1)[-1]

    def __repr__(self: object) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in shown)
        return f"{name}({inner})"

    def __eq__(self: object, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(values(self) == values(other))

    def __ne__(self: object, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(values(self) != values(other))

    def __hash__(self: object) -> int:
        return hash(values(self))

    for method in (__repr__, __eq__, __ne__, __hash__):
        method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
        setattr(cls, method.__name__, method)
    return cls
