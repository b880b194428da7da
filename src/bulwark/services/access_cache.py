"""Authorization decisions kept while nothing they were made from has changed.

On a cluster node, deciding whether a git request may go on reads about ten etcd keys
one after another (the maintenance flag, the token, its account, the owner, the
repository, a collaborator...), about 2 ms each. A decision is kept with the revision of
every key it read; the next identical request checks them all in one etcd transaction of
comparisons and reuses the decision only if etcd confirms, at that moment, that none was
written since. A revoked token or a repository made private is seen by the very next
request, exactly as without the cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from bulwark.clock import Clock

if TYPE_CHECKING:
    from bulwark.store.etcd import ReadLog

T = TypeVar("T")


class ReadLogging(Protocol):
    """A store that notes which keys a computation read, and tells later whether any changed
    (``EtcdStore``; a test's fake)."""

    def logging_reads(self) -> AbstractContextManager[ReadLog]: ...

    def unchanged(self, log: ReadLog) -> bool: ...


def cache_key(parts: Sequence[str | None]) -> bytes:
    """A digest of everything a decision depends on besides the store (credentials included)."""
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).digest()


@dataclass(frozen=True)
class _Kept(Generic[T]):
    value: T
    reads: ReadLog
    valid_until: datetime | None


class AccessCache(Generic[T]):
    def __init__(self, store: ReadLogging, clock: Clock, *, size: int = 4096) -> None:
        self.store = store
        self.clock = clock
        self.size = size
        self._kept: OrderedDict[bytes, _Kept[T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, decide: Callable[[], tuple[T, datetime | None]]) -> tuple[T, bool]:
        """The kept decision for ``key`` if still valid, else ``decide()``'s (kept if it can be
        checked later); and whether it was kept. ``decide`` returns its value and when it stops
        being valid by itself (a token's expiry), if ever. Errors it raises are never kept."""
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and self._still_valid(kept):
            with self._lock:
                self._kept.move_to_end(key)
            return kept.value, True
        with self.store.logging_reads() as log:
            value, valid_until = decide()
        with self._lock:
            self._kept.pop(key, None)
            if log.usable and log.reads:
                self._kept[key] = _Kept(value, log, valid_until)
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return value, False

    def _still_valid(self, kept: _Kept[T]) -> bool:
        if kept.valid_until is not None and kept.valid_until <= self.clock.now():
            return False
        return self.store.unchanged(kept.reads)
