"""Named choices as registries of objects, not string branches.

Usage::

    EXECUTORS = Registry("executor")
    EXECUTORS.register("local", LocalExecutor)
    EXECUTORS.get("local")            # the object
    EXECUTORS.get("tpu")              # DifflocInputError: unknown executor 'tpu'; allowed: local, ray
    EXECUTORS.names()                 # ('local', 'ray')

A registry maps a name to an object (a class, a factory or an instance). A new editor, metric,
world or executor is one ``register`` call plus its contract tests; nothing that dispatches
on the name changes. ``loader`` (optional) is called once, on the first lookup, to register
plug-ins found elsewhere (for worlds: the ``diffloc.worlds`` entry points).
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import DifflocInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with one clear error for an unknown name."""

    def __init__(self, kind: str, loader: Callable[["Registry[T]"], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, returns a decorator."""
        if obj is None:
            return lambda o: self.register(name, o, replace=replace)
        if name in self._items and not replace and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")  # a bug in the caller, not input
        self._items[name] = obj
        return obj

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._loader(self)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise DifflocInputError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names()) or '(none registered)'}")
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
