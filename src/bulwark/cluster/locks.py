"""Per-repository write locks in etcd.

A push, a repair and a checksum verification of one repository must not interleave,
whichever nodes run them. The lock is a key created only if absent, attached to the
holder's lease: if the holder dies, etcd drops the lock within the lease's TTL, so a
crashed node never leaves a repository locked.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

from bulwark.cluster import keys
from bulwark.cluster.etcd import KV, Compare, Etcd, Op
from bulwark.errors import Unavailable


class RepositoryBusy(Unavailable):
    """Another write to the repository held its lock for longer than we could wait."""


class RepoLocks:
    def __init__(self, etcd: Etcd, lease: Callable[[], int], holder: str, *, poll: float = 0.025) -> None:
        self.etcd = etcd
        self.lease = lease  # the holder's current lease id (it changes when a lost session is re-made)
        self.holder = holder
        self.poll = poll

    def try_acquire(self, storage_id: str) -> str | None:
        """Take the lock if it is free; the token to release it with, or None."""
        token = f"{self.holder}/{uuid.uuid4().hex[:12]}"
        key = keys.lock(storage_id)
        result = self.etcd.txn([Compare.absent(key)], [Op.put(key, token, self.lease())])
        return token if result.succeeded else None

    def acquire(self, storage_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            token = self.try_acquire(storage_id)
            if token is not None:
                return token
            if time.monotonic() >= deadline:
                kv = self.etcd.get(keys.lock(storage_id))
                who = kv.text.split("/")[0] if kv else "another node"
                raise RepositoryBusy(f"another write to this repository (on {who}) is still in progress; try again")
            time.sleep(self.poll)

    def acquire_reading(self, storage_id: str, timeout: float, *, unless: str, read: str) -> tuple[str, KV | None]:
        """Take the lock only while the key ``unless`` is absent, and read ``read`` in the same transaction.

        One etcd round trip when the lock is free: a push takes its repository's lock, checks that no
        backup is reading, and reads the repository's placement all at once.
        """
        deadline = time.monotonic() + timeout
        key = keys.lock(storage_id)
        while True:
            token = f"{self.holder}/{uuid.uuid4().hex[:12]}"
            result = self.etcd.txn(
                [Compare.absent(key), Compare.absent(unless)],
                [Op.put(key, token, self.lease()), Op.get(read)],
                [Op.get(unless), Op.get(key)],
            )
            if result.succeeded:
                found = result.reads[0]
                return token, found[0] if found else None
            if time.monotonic() >= deadline:
                blocker, holder = result.reads
                if blocker:
                    raise RepositoryBusy("a backup is reading this cluster's refs; try again")
                who = holder[0].text.split("/")[0] if holder else "another node"
                raise RepositoryBusy(f"another write to this repository (on {who}) is still in progress; try again")
            time.sleep(self.poll)

    def release(self, storage_id: str, token: str) -> None:
        key = keys.lock(storage_id)
        self.etcd.txn([Compare.value_is(key, token)], [Op.delete(key)])

    @contextlib.contextmanager
    def held(self, storage_id: str, timeout: float = 30.0) -> Iterator[str]:
        token = self.acquire(storage_id, timeout)
        try:
            yield token
        finally:
            with contextlib.suppress(Unavailable):  # the lease drops it anyway
                self.release(storage_id, token)
