"""What every domain of the etcd store builds on: construction, etcd access, commits and retries,
the read log, the accessors for the store's companions, and the helpers several domains share."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from bulwark.clock import Clock, SystemClock
from bulwark.errors import Conflict, InvalidInput, NotFound, StoreError
from bulwark.etcd import KV, Compare, Etcd, Op
from bulwark.models import AccountType, Repository, SshKey
from bulwark.store.etcd.codec import _decode, _doc, _load_token, _pair
from bulwark.store.etcd.keys import _Keys
from bulwark.store.etcd.readlog import ReadLog
from bulwark.store.times import dump_time as _dump_time

log = logging.getLogger("bulwark.store")

DEFAULT_PREFIX = "/bulwark/store/"

# The most comparisons or requests this store puts in one transaction; match it to
# etcd's --max-txn-ops.
MAX_TXN_OPS = 4096
# The version of the user-side indexes (``indexes`` key): written once their keys exist for all data.
# 1: memberships and collaborations; 2: and tokens.
INDEXES = "2"

# How many times a write starts over after colliding with concurrent writers.
MAX_ATTEMPTS = 64

_T = TypeVar("_T")


class _Collided(Exception):
    """A transaction's compares failed: another writer changed what it relied on."""


def _backoff(attempt: int) -> None:
    """A short random pause, growing with the attempt, so colliding writers spread out."""
    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


class _Base:
    """The state and the etcd plumbing of :class:`~bulwark.store.etcd.EtcdStore`; each domain's
    mixin inherits this, so the type checker sees what the mixins use."""

    def __init__(
        self,
        etcd: Etcd,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock | None = None,
        max_txn_ops: int = MAX_TXN_OPS,
    ) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"the store prefix must end with '/', got {prefix!r}")
        if max_txn_ops < 1:
            raise ValueError(f"max_txn_ops must be positive, got {max_txn_ops}")
        self._etcd = etcd
        self._keys = _Keys(prefix)
        self._clock: Clock = clock or SystemClock()
        self._max_txn_ops = max_txn_ops
        self._closed = False
        self._logs = threading.local()
        self._indexed = False
        self._ids_lock = threading.Lock()
        self._ids = (0, 0)  # the next repository id of this store's block, and the block's end

    def close(self) -> None:
        self._closed = True

    # -- for the store's companions on the same etcd (webhooks/store_etcd.py) ------------

    @property
    def etcd(self) -> Etcd:
        return self._client()

    @property
    def max_txn_ops(self) -> int:
        return self._max_txn_ops

    def key(self, suffix: str) -> str:
        """``suffix`` under the store's prefix."""
        return self._keys.prefix + suffix

    def now(self) -> str:
        return self._now()

    def commit(self, compares: list[Compare], ops: list[Op], what: str) -> None:
        """Apply ``ops`` if every comparison holds; else the attempt run by :meth:`retry` starts over."""
        self._commit(compares, ops, what)

    def retry(self, what: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (read, decide, :meth:`commit`) until its commit is not pre-empted."""
        return self._retry(what, attempt)

    # -- etcd access -------------------------------------------------------------------

    def _client(self) -> Etcd:
        if self._closed:
            raise StoreError("the metadata store is closed")
        return self._etcd

    # -- which keys a computation read (for results kept while those keys are unchanged) --

    @contextlib.contextmanager
    def logging_reads(self) -> Iterator[ReadLog]:
        """Note every key this thread reads until the block ends."""
        log, outer = ReadLog(), getattr(self._logs, "current", None)
        self._logs.current = log
        try:
            yield log
        finally:
            self._logs.current = outer

    def unchanged(self, log: ReadLog) -> bool:
        """Whether every key of ``log`` is still as it was read: one etcd transaction of comparisons."""
        if not log.usable or not log.reads or len(log.reads) > self._max_txn_ops:
            return False
        compares = [Compare.unchanged(key, revision) for key, revision in log.reads.items()]
        return self._client().txn(compares, []).succeeded

    def _note(self, key: str, kv: KV | None) -> None:
        log: ReadLog | None = getattr(self._logs, "current", None)
        if log is not None:
            log.reads[key] = kv.mod_revision if kv is not None else 0

    def _unloggable(self) -> None:
        log: ReadLog | None = getattr(self._logs, "current", None)
        if log is not None:
            log.usable = False

    # -- etcd access -------------------------------------------------------------------

    def _get(self, key: str) -> KV | None:
        kv = self._client().get(key)
        self._note(key, kv)
        return kv

    def _snapshot(self, *reads: Op) -> list[list[KV]]:
        """What each ``get`` finds, all at one revision (a transaction of reads only)."""
        self._unloggable()
        return self._client().txn([], reads).reads

    def _read(self, *keys: str) -> list[KV | None]:
        """The current value of each key (``None`` if missing), all at one revision."""
        found = [kvs[0] if kvs else None for kvs in self._client().txn([], [Op.get(key) for key in keys]).reads]
        for key, kv in zip(keys, found, strict=True):
            self._note(key, kv)
        return found

    def _read_many(self, keys: list[str]) -> list[KV | None]:
        """Like :meth:`_read` for any number of keys, in transactions of at most the etcd limit
        (so not all at one revision)."""
        self._unloggable()
        step = self._max_txn_ops
        found: list[KV | None] = []
        for start in range(0, len(keys), step):
            reads = self._client().txn([], [Op.get(key) for key in keys[start : start + step]]).reads
            found += [kvs[0] if kvs else None for kvs in reads]
        return found

    def _range(self, prefix: str) -> list[KV]:
        """Every key under ``prefix``, in key order."""
        self._unloggable()
        return self._client().get_prefix(prefix)

    def _commit(self, compares: list[Compare], ops: list[Op], what: str) -> None:
        """Apply ``ops`` if every comparison holds; ``_Collided`` if one does not."""
        size = max(len(compares), len(ops))
        if size > self._max_txn_ops:
            raise StoreError(
                f"{what} needs {size} operations in one etcd transaction, more than the"
                f" {self._max_txn_ops} allowed (etcd --max-txn-ops); nothing was changed"
            )
        self._unloggable()
        if not self._client().txn(compares, ops).succeeded:
            raise _Collided(what)

    def _retry(self, what: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (read, decide, commit) until its commit is not pre-empted."""
        for number in range(MAX_ATTEMPTS):
            if number:
                _backoff(number)
            try:
                return attempt()
            except _Collided:
                continue
        raise Conflict(f"{what} collided with concurrent changes {MAX_ATTEMPTS} times; try again")

    def _now(self) -> str:
        return _dump_time(self._clock.now())

    def _touch_dependents(self, account_id: int) -> Op:
        """The request that tells a concurrent ``delete_account`` a dependent was added."""
        return Op.put(self._keys.dependents(account_id), "")

    @staticmethod
    def _require_account(kv: KV | None, account_id: int, type: AccountType | None, role: str) -> KV:
        """``kv`` if it holds an account (of ``type``, if given)."""
        if kv is None:
            raise NotFound(f"{role} {account_id} does not exist")
        if type is not None and _doc(kv).get("type") != type.value:
            article = "an organization" if type is AccountType.ORGANIZATION else "a user"
            raise InvalidInput(f"{role} {account_id} is not {article}")
        return kv

    # -- removal helpers that account and repository deletes share ---------------------

    def _repo_removal(self, repo: Repository, collaborators: list[int]) -> list[Op]:
        """The requests that remove ``repo`` with its index keys and collaborators, and the
        index of its deploy keys (whose records and fingerprints the caller removes)."""
        keys = self._keys
        return [
            Op.delete(keys.repo(repo.id)),
            Op.delete(keys.repo_name(repo.owner_id, repo.name)),
            Op.delete(keys.storage_id(repo.storage_id)),
            Op.delete(keys.collaborators_of(repo.id), prefix=True),
            *(Op.delete(keys.collaboration_index(repo.id, user)) for user in collaborators),
            Op.delete(keys.deploy_keys_of(repo.id), prefix=True),
            Op.delete(keys.repo_dependents(repo.id)),
        ]

    def _still_fingerprint_of(self, key: SshKey) -> Compare:
        """The fingerprint index still names ``key``, so removing the index removes only its entry."""
        return Compare.value_is(self._keys.ssh_fingerprint(key.fingerprint), str(key.id))

    # -- indexes over data written before them ---------------------------------------

    def _ensure_indexes(self) -> None:
        """Write the user-side index keys of memberships, collaborations and tokens that data from
        before them lacks, once per store (idempotent: every node may do it, at the same time too)."""
        if self._indexed:
            return
        keys = self._keys
        marker = self._client().get(keys.indexes)
        if marker is None or marker.text != INDEXES:
            ops = [Op.put(keys.membership_index(*_pair(kv, keys.memberships)), "")
                   for kv in self._client().get_prefix(keys.memberships)]
            ops += [Op.put(keys.collaboration_index(*_pair(kv, keys.collaborators)), "")
                    for kv in self._client().get_prefix(keys.collaborators)]
            for kv in self._client().get_prefix(keys.tokens):
                token = _decode(kv, _load_token)
                ops.append(Op.put(keys.token_index(token.user_id, token.id), ""))
            for start in range(0, len(ops), self._max_txn_ops):
                self._client().txn([], ops[start : start + self._max_txn_ops])
            self._client().put(keys.indexes, INDEXES)
            log.info("etcd store: indexed %d memberships, collaborations and tokens from the user's side", len(ops))
        self._indexed = True
