"""The leader's half of a replicated push: votes, commits, generations.

The node that runs ``git receive-pack`` for a push *leads* it. Before git starts it
takes the repository's lock in etcd (so pushes through different nodes are
serialized: the second one sees the first one's refs and gets git's own
non-fast-forward rejection) and notes the other up-to-date replicas. Git's
``reference-transaction`` hook then reports each ref transaction to the leader:

* ``prepared`` — the leader's refs are locked and checked. Every follower takes in the
  new objects (a thin pack sent along, or fetched from the leader) and prepares the same
  update; the hook lets git commit only if a strict majority of *all* the repository's
  replicas (the leader included) voted for the identical update. Otherwise the followers abort and git aborts.
* ``committed`` — the followers commit too; one that fails is no longer counted.
* ``aborted`` — followers that prepared are told to abort.

When git is done, the leader raises the generation of exactly the replicas that
committed every round, in one compare-and-set, and only then is the push
acknowledged to the client. A push that committed on fewer than a majority is
reported to the client as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio.to_thread

from bulwark.cluster import keys, state
from bulwark.cluster.client import AsyncPeers
from bulwark.cluster.etcd import Compare, Etcd, Op
from bulwark.cluster.locks import RepoLocks
from bulwark.cluster.state import Placement
from bulwark.cluster.transactions import RefLine, vote_of
from bulwark.errors import BulwarkError, NotFound, PeerUnreachable, Unavailable
from bulwark.git.runner import ZERO_OID

log = logging.getLogger("bulwark.cluster")

T = TypeVar("T")


def has_quorum(votes: int, replicas: int) -> bool:
    """A strict majority of all replicas, counted whether they answered or not."""
    return votes * 2 > replicas


@dataclass
class Push:
    txn: str
    storage_id: str
    lock_token: str
    placement: Placement
    followers: dict[str, str]  # name -> URL of the other up-to-date replicas on live nodes
    good: set[str] = field(default_factory=set)  # followers that committed every round so far
    rounds: int = 0  # committed rounds
    prepared: dict[str, str] = field(default_factory=dict)  # followers holding the current round
    round_id: str = ""
    round_active: bool = False
    released: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def committed_on(self) -> int:
        return 1 + len(self.good)


@dataclass(frozen=True)
class Outcome:
    acknowledged: bool
    message: str


class Coordinator:
    def __init__(
        self,
        name: str,
        url: str,
        etcd: Etcd,
        locks: RepoLocks,
        peers: AsyncPeers,
        alive: Callable[[], set[str]],
        urls: Callable[[], dict[str, str]],
        *,
        lock_wait: float = 30.0,
        pack_for: Callable[[str, list[str]], Awaitable[bytes | None]] | None = None,
        liveness_every: float = 0.5,
    ) -> None:
        self.name = name
        self.url = url
        self.etcd = etcd
        self.locks = locks
        self.peers = peers
        self.alive = alive
        self.urls = urls
        self.lock_wait = lock_wait
        # The new objects of a round as a thin pack for the followers (None: they fetch them).
        self.pack_for = pack_for
        # How often a wait on followers checks that they still hold their etcd session.
        self.liveness_every = liveness_every
        self._pushes: dict[str, Push] = {}

    async def begin(self, storage_id: str) -> Push:
        # Lock, "no backup is reading" and the placement in one etcd transaction: a backup that
        # raises its barrier afterwards waits for this lock, so no push slips into its read.
        token, raw = await anyio.to_thread.run_sync(
            lambda: self.locks.acquire_reading(storage_id, self.lock_wait, unless=keys.BACKUP_BARRIER,
                                               read=keys.placement(storage_id))
        )
        try:
            if raw is None:
                raise NotFound("this repository has no replicas recorded")
            placement = Placement.from_kv(raw)
            if self.name not in placement.up_to_date():
                raise Unavailable("this node's copy of the repository is not up to date; try again")
            alive, urls = self.alive(), self.urls()
            followers = {n: urls[n] for n in placement.up_to_date() if n != self.name and n in alive and n in urls}
            if not has_quorum(1 + len(followers), len(placement.replicas)):
                raise Unavailable(
                    f"only {1 + len(followers)} of the {len(placement.replicas)} replicas of this repository are "
                    "reachable and up to date; a push needs a majority"
                )
        except BaseException:
            await anyio.to_thread.run_sync(self.locks.release, storage_id, token)
            raise
        push = Push(uuid.uuid4().hex, storage_id, token, placement, followers, good=set(followers))
        self._pushes[push.txn] = push
        return push

    async def on_hook(self, txn: str, hook_state: str, lines: list[RefLine]) -> tuple[bool, str]:
        push = self._pushes.get(txn)
        if push is None:
            return False, "no push in progress with this id"
        if hook_state == "prepared":
            # HEAD shows up when the branch it points at moves; the branch itself is what replicates.
            lines = [line for line in lines if line[2].startswith("refs/")]
            push.round_active = bool(lines)
            if not lines:
                return True, "nothing to replicate"
            return await self._prepare(push, lines)
        if hook_state == "committed":
            if push.round_active:
                await self._commit(push)
            push.round_active = False
            return True, "committed"
        if hook_state == "aborted":
            push.round_active = False
            await self._abort(push)
            return True, "aborted"
        return True, f"ignored state {hook_state}"

    async def _prepare(self, push: Push, lines: list[RefLine]) -> tuple[bool, str]:
        push.round_id = f"{push.txn}-{push.rounds}-{uuid.uuid4().hex[:6]}"
        mine = vote_of(lines)
        candidates = {n: u for n, u in push.followers.items() if n in push.good}
        wanted = [new for _old, new, _ref in lines if new != ZERO_OID]
        pack = await self.pack_for(push.storage_id, wanted) if self.pack_for and wanted and candidates else None
        results = await self._answers({
            name: self.peers.prepare(url, push.storage_id, push.round_id, lines, self.url, pack)
            for name, url in candidates.items()
        })
        push.prepared = {}
        for (name, url), result in zip(candidates.items(), results, strict=True):
            if isinstance(result, BaseException):
                push.problems.append(f"{name}: {result}")
                push.good.discard(name)
            elif result != mine:
                push.problems.append(f"{name} voted for a different update")
                push.good.discard(name)
                push.prepared[name] = url  # holds locks: must be aborted
            else:
                push.prepared[name] = url
        votes = 1 + sum(1 for n in push.prepared if n in push.good)
        if has_quorum(votes, len(push.placement.replicas)):
            return True, f"{votes} of {len(push.placement.replicas)} replicas agree"
        await self._abort(push)
        log.warning("push to %s refused: %d of %d replicas agreed (%s)", push.storage_id, votes,
                    len(push.placement.replicas), "; ".join(push.problems))
        return False, (
            f"only {votes} of {len(push.placement.replicas)} replicas could take this update; "
            f"a majority is needed ({'; '.join(push.problems) or 'no answer'})"
        )

    async def _commit(self, push: Push) -> None:
        targets = {n: u for n, u in push.prepared.items() if n in push.good}
        stray = {n: u for n, u in push.prepared.items() if n not in push.good}
        results = await self._answers({
            **{n: self.peers.commit(u, push.storage_id, push.round_id) for n, u in targets.items()},
            **{n: self.peers.abort(u, push.storage_id, push.round_id) for n, u in stray.items()},
        })
        for name, result in zip(targets, results[: len(targets)], strict=True):
            if isinstance(result, BaseException):
                push.problems.append(f"{name}: {result}")
                push.good.discard(name)
        push.prepared = {}
        push.rounds += 1

    async def _abort(self, push: Push) -> None:
        await self._answers({n: self.peers.abort(u, push.storage_id, push.round_id) for n, u in push.prepared.items()})
        push.prepared = {}

    async def _answers(self, calls: dict[str, Awaitable[T]]) -> list[T | BaseException]:
        """Every follower's answer (or error), in the order of ``calls``. A follower whose node loses
        its etcd session meanwhile is given up on: a hung node would otherwise hold the push for the
        whole peer timeout."""
        tasks = {name: asyncio.ensure_future(call) for name, call in calls.items()}
        pending: set[asyncio.Future[T]] = set(tasks.values())
        while pending:
            _, pending = await asyncio.wait(pending, timeout=self.liveness_every)
            if not pending:
                break
            try:
                alive = await anyio.to_thread.run_sync(self.alive)
            except BulwarkError:
                continue  # etcd unreachable: cannot tell; the peer timeout still bounds the wait
            for name, task in tasks.items():
                if task in pending and name not in alive:
                    task.cancel()
        answers: list[T | BaseException] = []
        for name, task in tasks.items():
            if task.cancelled():
                answers.append(PeerUnreachable(f"{name} lost its cluster session before it answered"))
            else:
                answers.append(task.exception() or task.result())
        return answers

    async def finish(self, push: Push) -> Outcome:
        """Record which replicas hold the push, release the lock, and say whether it is acknowledged."""
        self._pushes.pop(push.txn, None)
        try:
            if push.rounds == 0:
                return Outcome(True, "no ref changed")
            holders = {self.name, *push.good}
            new_generation = push.placement.generation + 1

            def bump(current: Placement) -> Placement:
                replicas = dict(current.replicas)
                for name in holders:
                    if name in replicas:
                        replicas[name] = new_generation
                return current.with_replicas(replicas)

            try:
                await anyio.to_thread.run_sync(self._record, push, bump)
            except BulwarkError as exc:
                log.error("push %s to %s committed but its generation was not recorded: %s",
                          push.txn, push.storage_id, exc)
                return Outcome(False, f"the push could not be recorded in the cluster state: {exc}")
            replicas = len(push.placement.replicas)
            if has_quorum(len(holders), replicas):
                if push.problems:
                    log.warning("push to %s committed on %d of %d replicas: %s", push.storage_id, len(holders),
                                replicas, "; ".join(push.problems))
                return Outcome(True, f"committed on {len(holders)} of {replicas} replicas")
            return Outcome(False, f"the push reached only {len(holders)} of {replicas} replicas, not a majority; "
                                  f"it is not acknowledged ({'; '.join(push.problems)})")
        finally:
            await anyio.to_thread.run_sync(self._release, push)

    def _record(self, push: Push, bump: Callable[[Placement], Placement]) -> None:
        """Write the new generations and release the lock in one transaction when nothing else
        touched the placement meanwhile (the usual case); otherwise compare-and-set again."""
        key, lock = keys.placement(push.storage_id), keys.lock(push.storage_id)
        result = self.etcd.txn(
            [Compare.unchanged(key, push.placement.revision), Compare.value_is(lock, push.lock_token)],
            [Op.put(key, bump(push.placement).to_json()), Op.delete(lock)],
        )
        if result.succeeded:
            push.released = True
            return
        state.update_placement(self.etcd, push.storage_id, bump)

    async def cancel(self, push: Push) -> None:
        self._pushes.pop(push.txn, None)
        await self._abort(push)
        await anyio.to_thread.run_sync(self._release, push)

    def _release(self, push: Push) -> None:
        if push.released:
            return
        with contextlib.suppress(Unavailable):  # the lease drops the lock anyway
            self.locks.release(push.storage_id, push.lock_token)
