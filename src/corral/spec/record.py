"""`Record`: data classes declared like `dataclasses`, without importing it.

`dataclasses` (with `inspect` behind it) and the code it generates per class
cost ~30 ms at start-up, the largest part of a `corral-runtime create`.
A Record reads the annotated fields of its class once, when the class is
made, and one generic __init__ fills them in.
"""

from __future__ import annotations

_REQUIRED = object()


class Factory:
    """A default made fresh for each instance (like dataclasses' default_factory)."""

    def __init__(self, make):
        self.make = make


class Record:
    _fields: tuple[tuple[str, object], ...] = ()

    def __init_subclass__(cls) -> None:
        own = [(name, cls.__dict__.get(name, _REQUIRED))
               for name in cls.__dict__.get("__annotations__", {})
               if not name.startswith("_")]
        cls._fields = (*cls._fields, *own)

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__}: too many arguments")
        for (name, _), value in zip(self._fields, args, strict=False):
            kwargs[name] = value
        for name, default in self._fields:
            if name in kwargs:
                value = kwargs.pop(name)
            elif default is _REQUIRED:
                raise TypeError(f"{type(self).__name__}: missing {name!r}")
            elif isinstance(default, Factory):
                value = default.make()
            elif isinstance(default, (list, dict)):
                value = type(default)(default)  # never share a mutable default
            else:
                value = default
            setattr(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unknown field {next(iter(kwargs))!r}")

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n, _ in self._fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in self._fields)
        return f"{type(self).__name__}({inner})"
