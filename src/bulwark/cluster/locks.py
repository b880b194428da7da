"""Per-repository write locks in etcd.

A push, a repair and a checksum verification of one repository must not interleave,
whichever nodes run them. The lock is a key created only if absent, attached to the
holder's lease: if the holder dies, etcd drops the lock within the lease's TTL, so a
crashed node never leaves a repository locked.

A live holder can orphan a lock, though: a transaction that timed out (etcd cut off, or
electing a leader) may still be applied afterwards, and a release may not get through. The
lease lives on, and with it the lock. So each node keeps the tokens it is using; a lock
under its name and lease that is not among them is an orphan, and :meth:`RepoLocks.drop_orphans`
deletes it. A token is noted before the transaction that might take the lock is sent, so a
lock is never seen before its token is known.

A holder whose process is gone (its node refuses connections: killed, crashed) would still keep
the lock for up to the lease's TTL. A node waiting for such a lock ends that lease at once: what
the dead process held is released, and its pushes are settled by the next holder as usual.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bulwark.cluster import keys
from bulwark.errors import Unavailable
from bulwark.etcd import KV, Compare, Etcd, Op

log = logging.getLogger("bulwark.cluster")

HOLDER_LOOK_EVERY = 0.5  # seconds between looks at a busy lock's holder while waiting for it


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
    def __init__(self, etcd: Etcd, lease: Callable[[], int], holder: str, *, poll: float = 0.025,
                 gone: Callable[[str], bool] | None = None) -> None:
        self.etcd = etcd
        self.gone = gone  # whether the named node's process is certainly not running
        self.lease = lease  # the holder's current lease id (it changes when a lost session is re-made)
        self.holder = holder
        self.poll = poll
        self._mine: set[str] = set()  # tokens in use in this process (taken, or being taken)
        self._mine_lock = threading.Lock()

    def _new_token(self) -> str:
        token = f"{self.holder}/{uuid.uuid4().hex[:12]}"
        with self._mine_lock:
            self._mine.add(token)
        return token

    def forget(self, token: str) -> None:
        """The token is done with (released, or never taken): a lock still holding it is an orphan."""
        with self._mine_lock:
            self._mine.discard(token)

    def try_acquire(self, storage_id: str) -> str | None:
        """Take the lock if it is free; the token to release it with, or None."""
        token = self._new_token()
        key = keys.lock(storage_id)
        try:
            result = self.etcd.txn([Compare.absent(key)], [Op.put(key, token, self.lease())])
        except BaseException:
            self.forget(token)  # it may have been applied anyway: drop_orphans finds it then
            raise
        if not result.succeeded:
            self.forget(token)
            return None
        return token

    def try_create(self, storage_id: str, key: str, value: str) -> str | None:
        """Take the free lock and write the absent ``key`` in one transaction; the token, or None
        if the lock was taken or ``key`` exists (then nothing was written)."""
        token = self._new_token()
        lock = keys.lock(storage_id)
        try:
            result = self.etcd.txn([Compare.absent(lock), Compare.absent(key)],
                                   [Op.put(lock, token, self.lease()), Op.put(key, value)])
        except BaseException:
            self.forget(token)
            raise
        if not result.succeeded:
            self.forget(token)
            return None
        return token

    def acquire(self, storage_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        probed: set[int] = set()
        look_at = 0.0  # when to read who holds the lock next (not on every poll)
        while True:
            token = self.try_acquire(storage_id)
            if token is not None:
                return token
            now = time.monotonic()
            if now >= look_at:
                look_at = now + HOLDER_LOOK_EVERY
                kv = self.etcd.get(keys.lock(storage_id))
                if kv is not None and self._ended_dead_holder(storage_id, kv, probed):
                    continue
            if now >= deadline:
                kv = self.etcd.get(keys.lock(storage_id))
                who = kv.text.split("/")[0] if kv else "another node"
                raise RepositoryBusy(f"another write to this repository (on {who}) is still in progress; try again")
            time.sleep(self.poll)

    def _ended_dead_holder(self, storage_id: str, lock: KV, probed: set[int]) -> bool:
        """If ``lock`` belongs to another node whose process is gone, end its lease; once per lease."""
        who = lock.text.split("/")[0]
        if self.gone is None or who == self.holder or not lock.lease or lock.lease in probed:
            return False
        probed.add(lock.lease)
        if not self.gone(who):
            return False
        log.warning("cluster: %s holds the lock of %s, but it refuses connections (its process is gone); "
                    "ending its etcd session rather than waiting for its lease to expire", who, storage_id)
        self.etcd.revoke(lock.lease)
        return True

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
        probed: set[int] = set()
        while True:
            lease = self.lease()
            token = self._new_token()
            try:
                result = self.etcd.txn(
                    [Compare.absent(key), Compare.absent(unless)],
                    [Op.get(intent_key), Op.put(key, token, lease), Op.put(intent_key, f"{token} {intent}"),
                     Op.get(keys.placement(storage_id))],
                    [Op.get(unless), Op.get(key)],
                )
            except BaseException:
                self.forget(token)
                raise
            if result.succeeded:
                left, found = result.reads
                return Held(token, lease, found[0] if found else None, left[0].text if left else None)
            self.forget(token)
            blocker, holder = result.reads
            if not blocker and holder and self._ended_dead_holder(storage_id, holder[0], probed):
                continue
            if time.monotonic() >= deadline:
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
        try:
            self.etcd.txn([Compare.value_is(key, token)], [Op.delete(key)])
        finally:
            self.forget(token)

    def drop_orphans(self) -> int:
        """Delete the locks under this node's name and current lease that no work here holds."""
        lease = self.lease()
        with self._mine_lock:
            mine = set(self._mine)
        dropped = 0
        for kv in self.etcd.get_prefix(keys.LOCKS):
            if kv.lease != lease or not kv.text.startswith(f"{self.holder}/") or kv.text in mine:
                continue
            with self._mine_lock:
                if kv.text in self._mine:
                    continue  # taken just now: the token was noted before its transaction
            if self.etcd.txn([Compare.value_is(kv.key, kv.text)], [Op.delete(kv.key)]).succeeded:
                log.warning("cluster: released the lock of %s that no work on this node held (%s): a transaction "
                            "that seemed to fail was applied, or a release did not get through",
                            keys.tail(kv.key, keys.LOCKS), kv.text)
                dropped += 1
        return dropped

    @contextlib.contextmanager
    def held(self, storage_id: str, timeout: float = 30.0) -> Iterator[str]:
        token = self.acquire(storage_id, timeout)
        try:
            yield token
        finally:
            with contextlib.suppress(Unavailable):  # the lease drops it anyway
                self.release(storage_id, token)
