"""One small Registry class, used for methods, tasks, rollout corrections and rollout engines."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class OffbenchError(Exception):
    """A user-facing error: the CLI prints its message on one line, never a traceback."""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, origin: str) -> T:
        """Register `item` under `name`. `origin` (module.qualname) lets a module reload itself."""
        if name in self._items and getattr(self._items[name], "origin", None) != origin:
            raise OffbenchError(
                f"{self.kind} {name!r} is already registered (by "
                f"{getattr(self._items[name], 'origin', '?')}); pick another name"
            )
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise OffbenchError(
                f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


def typed_args(kind: str, name: str, args_cls: type, cfg=None):
    """The typed arguments of a registry entry from a config node (its `name` key ignored): an
    unknown key is a one-line error listing the entry's arguments; an args class with a `check()`
    method validates its values (one-line errors)."""
    values = {} if cfg is None else dict(cfg)
    values.pop("name", None)
    names = {f.name for f in dataclasses.fields(args_cls)}
    unknown = set(values) - names
    if unknown:
        raise OffbenchError(f"{kind} {name!r} has no argument(s) {sorted(unknown)}; "
                            f"its arguments: {', '.join(sorted(names)) or 'none'}")
    args = args_cls(**values)
    check = getattr(args, "check", None)
    if check is not None:
        check()
    return args
