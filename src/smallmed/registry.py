"""A minimal name -> object registry with "did you mean" errors (models, datasets, ...)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import SmallmedError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise with close matches and the full list.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(): ...
        >>> MODELS.get("tiny") is tiny
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SmallmedError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(sorted(self._items))}."

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def check_choice(field: str, value: str, choices: list[str] | tuple[str, ...]) -> str:
    """Validate a string option with a "did you mean" message naming the field."""
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise SmallmedError(f"{field}={value!r} is not valid.{hint} Choose one of: {', '.join(choices)}.")
