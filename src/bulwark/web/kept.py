"""What pages keep between requests: renderings of immutable things, by the id that names them.

A blob, a commit and a tree are named by their content's hash, so what a page computed from one
(highlighted lines, a commit's diff, a page of history from a commit) is never stale. Access is
checked on every request before anything kept is used; keys include the repository's storage id,
so nothing crosses between repositories. Each store is bounded by a byte estimate, least recently
used out first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Kept(Generic[T]):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T], size: Callable[[T], int]) -> T:
        """The kept value for ``key``, or ``make()``'s, kept unless it is a quarter of the budget or more."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found[0]
        value = make()
        cost = size(value)
        if cost < self.max_bytes // 4:
            with self._lock:
                if key not in self._items:
                    self._items[key] = (value, cost)
                    self._bytes += cost
                while self._bytes > self.max_bytes:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._bytes -= dropped
        return value

    @property
    def bytes(self) -> int:
        return self._bytes
