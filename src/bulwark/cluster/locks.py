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
from dataclasses import dataclass

from bulwark.cluster import keys
from bulwark.cluster.etcd import KV, Compare, Etcd, Op
from bulwark.errors import Unavailable


class RepositoryBusy(Unavailable):
    """Another write to the repository held its lock for longer than we could wait."""


@dataclass(frozen=True)
class Held:
    """A push's hold on a repository lock, with what it read in the same transaction."""

    token: str  # the lock's value: followers check it in etcd before they prepare or commit
    lease: int  # the lease the lock is attached to: the leader's proof that it still holds it
    placement: KV | None
    left_intent: str | None  # an intent a previous push never settled, if any


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

    def acquire_for_push(self, storage_id: str, timeout: float, *, unless: str, intent: str) -> Held:
        """Take the lock only while the key ``unless`` is absent; in the same transaction read the
        repository's placement and any intent a push left behind, and record this push's intent.

        One etcd round trip when the lock is free: a push takes its repository's lock, checks that no
        backup is reading, reads the placement and marks itself under way all at once. The intent
        has no lease: if this push's leader dies or is cut off before it records the outcome, the
        next holder of the lock finds it and compares the replicas' refs before trusting them.
        """
        deadline = time.monotonic() + timeout
        key, intent_key = keys.lock(storage_id), keys.intent(storage_id)
        while True:
            token = f"{self.holder}/{uuid.uuid4().hex[:12]}"
            lease = self.lease()
            result = self.etcd.txn(
                [Compare.absent(key), Compare.absent(unless)],
                [Op.get(intent_key), Op.put(key, token, lease), Op.put(intent_key, f"{token} {intent}"),
                 Op.get(keys.placement(storage_id))],
                [Op.get(unless), Op.get(key)],
            )
            if result.succeeded:
                left, found = result.reads
                return Held(token, lease, found[0] if found else None, left[0].text if left else None)
            if time.monotonic() >= deadline:
                blocker, holder = result.reads
                if blocker:
                    raise RepositoryBusy("a backup is reading this cluster's refs; try again")
                who = holder[0].text.split("/")[0] if holder else "another node"
                raise RepositoryBusy(f"another write to this repository (on {who}) is still in progress; try again")
            time.sleep(self.poll)

    def holds(self, storage_id: str, token: str) -> bool:
        """Whether ``token`` is still the repository's lock: the fencing check a follower makes
        before it prepares or commits a leader's update."""
        kv = self.etcd.get(keys.lock(storage_id))
        return kv is not None and kv.text == token

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
