"""The registry mechanism behind generators, extractors, metrics, cohorts and suites.

Entries are registered eagerly (an object) or lazily (a ``"module:Object"`` string imported on first
use), may have aliases, and third-party packages add entries through a Python entry-point group.
Unknown names raise :class:`UnknownNameError` with "did you mean" suggestions. The registries
themselves live beside what they register: :mod:`cohorts.registry` and :mod:`bench.registry`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Generic, Iterator, TypeVar

from core.names import close_matches

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name. ``str(err)`` reads well on a terminal."""

    def __init__(self, kind: str, name: str, suggestions: list[str], available: list[str]):
        self.kind, self.name, self.suggestions, self.available = kind, name, suggestions, available
        msg = f"unknown {kind} {name!r}"
        if suggestions:
            msg += f"; did you mean {', '.join(repr(s) for s in suggestions)}?"
        msg += f" (available: {', '.join(available) or 'none'})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return self.args[0]


def _import_object(target: str):
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"lazy registry target {target!r} must look like 'package.module:Object'")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class _Entry(Generic[T]):
    name: str
    target: object  # T or "module:Object"
    description: str = ""
    aliases: tuple[str, ...] = ()
    source: str = "builtin"

    def load(self) -> T:
        if isinstance(self.target, str):
            self.target = _import_object(self.target)
        return self.target  # type: ignore[return-value]


@dataclass
class Registry(Generic[T]):
    """A named collection of ``T`` with aliases, lazy entries and entry-point plugins.

    Args:
        kind: what the entries are, used in messages ("generator", "metric", ...).
        entry_point_group: Python entry-point group scanned once, on first lookup.
    """

    kind: str
    entry_point_group: str | None = None
    _entries: dict[str, _Entry[T]] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _plugins_loaded: bool = False

    def register(self, name: str, target: T | str, *, aliases: tuple[str, ...] | list[str] = (),
                 description: str = "", source: str = "builtin", overwrite: bool = False) -> None:
        key = name.lower()
        if not overwrite and (key in self._entries or key in self._aliases):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = _Entry(name, target, description, tuple(aliases), source)
        for alias in aliases:
            self._aliases[alias.lower()] = key

    def decorator(self, name: str, *, aliases: tuple[str, ...] = (), description: str = ""):
        """Register a class or function with ``@registry.decorator("name")``."""

        def wrap(obj):
            self.register(name, obj, aliases=aliases, description=description or (obj.__doc__ or "").strip().split("\n")[0])
            return obj

        return wrap

    def _load_plugins(self) -> None:
        if self._plugins_loaded or not self.entry_point_group:
            self._plugins_loaded = True
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name.lower() in self._entries:
                continue  # builtins win; a plugin cannot shadow them silently
            self.register(ep.name, ep.value, source=f"plugin:{ep.dist.name if ep.dist else '?'}")

    def canonical(self, name: str) -> str:
        self._load_plugins()
        key = name.lower()
        key = self._aliases.get(key, key)
        if key not in self._entries:
            choices = sorted(set(self._entries) | set(self._aliases))
            close = close_matches(key, choices, n=3, cutoff=0.5)
            close = [self._entries[self._aliases.get(c, c)].name for c in close]
            raise UnknownNameError(self.kind, name, list(dict.fromkeys(close)), self.names())
        return key

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)].load()

    def entry(self, name: str) -> _Entry[T]:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except UnknownNameError:
            return False
        return True

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(e.name for e in self._entries.values())

    def __iter__(self) -> Iterator[_Entry[T]]:
        self._load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))
