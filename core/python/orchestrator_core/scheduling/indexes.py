"""The sorted containers every scheduling index is made of.

:class:`KeyedIndex` is a sorted set of ``(key, id)`` pairs that finds an id's current key in
O(1), so re-keying an entity is two O(log n) steps. :class:`SortedSeq` is the read-only face
the snapshot shows of a sorted list: planners walk it (index, slice, bisect), never change it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar

from sortedcontainers import SortedList

__all__ = ["EMPTY", "KeyedIndex", "SortedSeq"]

K = TypeVar("K")


class SortedSeq(Protocol):
    """A read-only sorted sequence (a ``sortedcontainers.SortedList`` as planners see it):
    entries are tuples, ascending."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def islice(self, start: int | None = None, stop: int | None = None) -> Iterator[Any]:
        """Entries ``start`` to ``stop`` without copying the list."""
        ...

    def bisect_left(self, value: Any) -> int:
        """Index of the first entry ``>= value``."""
        ...


EMPTY: SortedSeq = SortedList()
"""An empty sorted sequence, returned for things that have no index (yet). Never add to it."""


class KeyedIndex(Generic[K]):
    """A sorted set of ``(key, id)`` with O(1) lookup of an id's current key."""

    __slots__ = ("keys", "sl")

    def __init__(self) -> None:
        self.keys: dict[str, K] = {}
        self.sl: Any = SortedList()

    def set(self, ident: str, key: K | None) -> None:
        """Give ``ident`` the key ``key`` (``None``: take it out). O(log n)."""
        old = self.keys.get(ident)
        if old is None:
            if key is None:
                return
        elif old == key:
            return
        else:
            self.sl.remove((old, ident))
        if key is None:
            del self.keys[ident]
        else:
            self.keys[ident] = key
            self.sl.add((key, ident))

    def first(self) -> tuple[K, str] | None:
        """The entry with the lowest key, or ``None``."""
        sl = self.sl
        return sl[0] if sl else None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, ident: object) -> bool:
        return ident in self.keys
