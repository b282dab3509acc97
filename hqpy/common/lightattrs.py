"""`attrs.frozen` for classes that must be cheap to create: the wire messages and what they hold.

Every `hq` call defines all message classes, and importing attrs and letting it compile an
`__init__`, repr, eq and hash per class cost a CLI call about a third of its start-up. A class made
here is what `attrs.frozen` makes (slots, frozen, an `__init__` taking the fields in order with
their defaults, attrs's repr text, eq and hash by field values), built without importing attrs:

- `__init__` is compiled on the class's first instantiation (a client builds a handful of the
  hundred classes);
- repr, eq and hash are shared functions;
- `__attrs_attrs__` is made by attrs itself on first access (`attrs.fields`, `attrs.has`,
  `attrs.evolve`, cattrs), so code that uses attrs on these classes sees real attrs classes.

`fields_of` gives the codec the field names, annotations and defaults without importing attrs.
Modules use it at run time only; type checkers see `attrs` itself (`if TYPE_CHECKING: import
attrs`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, TypeVar, cast

C = TypeVar("C", bound=type)


class Factory:
    """`attrs.Factory` (without `takes_self`): a default built anew for each instance."""

    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], object]) -> None:
        self.factory = factory


NOTHING: Any = type("_Nothing", (), {"__repr__": lambda self: "NOTHING"})()
"""The default of a field that has none."""


class Field:
    """A field of a light class: what the codec needs to know about it."""

    __slots__ = ("name", "annotation", "default")

    def __init__(self, name: str, annotation: object, default: object) -> None:
        self.name = name
        self.annotation = annotation
        self.default = default
        """`NOTHING`, a value, or a `Factory`."""


def fields_of(cls: type) -> tuple[Field, ...]:
    """The fields of a class made by `frozen`, in order."""
    found: tuple[Field, ...] = cls.__dict__["__light_fields__"]
    return found


def is_light(cls: object) -> bool:
    return isinstance(cls, type) and "__light_fields__" in cls.__dict__


def frozen(maybe_cls: C | None = None) -> Any:  # `Any`: as `attrs.frozen`'s
    """`attrs.frozen` (slots, frozen, eq, hash), made without attrs."""
    return _build if maybe_cls is None else _build(maybe_cls)


def _build(cls: C) -> C:
    namespace = dict(cls.__dict__)
    fields: list[Field] = []
    for base in reversed(cls.__mro__[1:-1]):
        fields += base.__dict__.get("__light_fields__", ())
    for name, annotation in namespace.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        fields = [f for f in fields if f.name != name]
        fields.append(Field(name, annotation, namespace.pop(name, NOTHING)))
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    names = tuple(f.name for f in fields)
    inherited = {n for base in cls.__mro__[1:-1] for n in base.__dict__.get("__slots__", ())}
    namespace["__slots__"] = tuple(n for n in (*names, "__weakref__") if n not in inherited)
    namespace["__light_fields__"] = tuple(fields)
    namespace["__match_args__"] = names
    namespace["__attrs_attrs__"] = _AttrsFields()
    namespace["__init__"] = _lazy_init
    values: Callable[[object], object] = operator.attrgetter(*names) if names else _no_values
    namespace["_light_values"] = staticmethod(values)
    for method in _SHARED:
        namespace[method.__name__] = method
    made = type(cls)(cls.__name__, cls.__bases__, namespace)
    made.__qualname__ = cls.__qualname__
    return made


def _no_values(_: object) -> tuple[()]:
    return ()


def _lazy_init(self: object, *args: object, **kwargs: object) -> None:
    cls = type(self)
    init = _compile_init(cls)
    type.__setattr__(cls, "__init__", init)
    init(self, *args, **kwargs)


def _compile_init(cls: type) -> Callable[..., None]:
    """The `__init__` attrs would generate: fields in order, keyword or positional."""
    params, body = [], []
    scope: dict[str, object] = {"_set": object.__setattr__, "NOTHING": NOTHING}
    for f in fields_of(cls):
        if f.default is NOTHING:
            params.append(f.name)
        elif isinstance(f.default, Factory):
            params.append(f"{f.name}=NOTHING")
            scope[f"_factory_{f.name}"] = f.default.factory
            body.append(f"    if {f.name} is NOTHING: {f.name} = _factory_{f.name}()")
        else:
            params.append(f"{f.name}=_default_{f.name}")
            scope[f"_default_{f.name}"] = f.default
        body.append(f"    _set(self, {f.name!r}, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass")
    # `exec` of the text, not of `compile(...)`: the builtin `compile` sets up the `ast` module's
    # classes on its first call, ~3 ms that a client would pay for nothing.
    exec(source, scope)
    init = cast("Callable[..., None]", scope["__init__"])
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


class _AttrsFields:
    """`__attrs_attrs__`, made by attrs from the same fields on first access, then stored on the
    class: from then on attrs and cattrs treat the class as one of theirs."""

    def __get__(self, instance: object, owner: type) -> object:
        import attrs

        fields = fields_of(owner)
        namespace: dict[str, object] = {
            "__annotations__": {f.name: f.annotation for f in fields},
            "__module__": owner.__module__,
        }
        for f in fields:
            if isinstance(f.default, Factory):
                namespace[f.name] = attrs.Factory(f.default.factory)
            elif f.default is not NOTHING:
                namespace[f.name] = f.default
        model = attrs.frozen(
            type(owner.__name__, (), namespace), init=False, repr=False, eq=False, slots=False
        )
        made: object = getattr(model, "__attrs_attrs__")  # noqa: B009 (mypy: no such attribute)
        type.__setattr__(owner, "__attrs_attrs__", made)
        return made


def __repr__(self: Any) -> str:
    inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields_of(type(self)))
    return f"{type(self).__qualname__.rsplit('>.', 1)[-1]}({inner})"


def __eq__(self: Any, other: object) -> bool:
    values = self._light_values
    if other.__class__ is not self.__class__:
        return NotImplemented
    return bool(values(self) == values(other))


def __ne__(self: Any, other: object) -> bool:
    values = self._light_values
    if other.__class__ is not self.__class__:
        return NotImplemented
    return bool(values(self) != values(other))


def __hash__(self: Any) -> int:
    return hash(self._light_values(self))


def __setattr__(self: object, name: str, value: object) -> None:
    _frozen()


def __delattr__(self: object, name: str) -> None:
    _frozen()


def __getstate__(self: Any) -> dict[str, object]:
    return {f.name: getattr(self, f.name) for f in fields_of(type(self))}


def __setstate__(self: object, state: dict[str, object]) -> None:
    for name, value in state.items():
        object.__setattr__(self, name, value)


def _frozen() -> None:
    from attrs.exceptions import FrozenInstanceError

    raise FrozenInstanceError()


_SHARED = (__repr__, __eq__, __ne__, __hash__, __setattr__, __delattr__, __getstate__, __setstate__)
