"""One name-to-factory lookup for every registry (processes, solvers, grids, policies).

``Registry(kind)`` maps names to factories. Registration has no side effect beyond the
registry it is called on (no import-time mutation of another module's table), and a name
is registered once: a second registration under the same name raises unless
``replace=True``. ``get`` builds an instance and names the valid choices when the name is
unknown, so every lookup in the package fails the same way.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
    """Names -> factories for one ``kind`` of thing (used in error messages)."""

    def __init__(self, kind: str, entries: dict[str, Callable[..., Any]] | None = None):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        for name, factory in (entries or {}).items():
            self.register(name, factory)

    def register(self, name: str, factory: Callable[..., Any] | None = None, *, replace: bool = False):
        """Register ``factory`` under ``name``; without ``factory``, a decorator."""
        if factory is None:
            return lambda f: self.register(name, f, replace=replace) or f
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to replace it)")
        self._entries[name] = factory
        return None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; unknown names raise with the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def get(self, name: str, **options) -> Any:
        """``factory(name)(**options)``; a factory that rejects the options raises ValueError."""
        factory = self.factory(name)
        try:
            return factory(**options)
        except TypeError as e:
            raise ValueError(f"bad options for {self.kind} {name!r}: {e}") from None

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
