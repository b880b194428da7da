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

Leadership cannot outlive the lease: the lock is attached to the leader's lease, the
leader checks that the lease still holds (with a margin) before it asks followers to
prepare, before it lets git commit and before it tells followers to commit; followers
check in etcd that the push's lock token is still the lock before they prepare or
commit; and the generations are recorded only in a transaction that compares the lock
token. A leader that lost its lock records nothing; the intent it wrote with the lock
(``cluster/intents.py``) makes the next holder compare the replicas' refs on disk.

A follower that has not answered ``straggler_deadline`` seconds after a majority agreed is
given up on: the push goes on without it, and it is outdated.
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

from bulwark.cluster import intents, keys
from bulwark.cluster.client import AsyncPeers
from bulwark.cluster.locks import Held, RepoLocks
from bulwark.cluster.push_follower import RefLine, vote_of
from bulwark.cluster.state import Placement
from bulwark.cluster.voting import has_quorum
from bulwark.errors import BulwarkError, NotFound, PeerUnreachable, Unavailable
from bulwark.etcd import Compare, Etcd, Op
from bulwark.git.runner import ZERO_OID

log = logging.getLogger("bulwark.cluster")

T = TypeVar("T")


@dataclass
class Push:
    txn: str
    storage_id: str
    lock_token: str
    placement: Placement
    followers: dict[str, str]  # name -> URL of the other up-to-date replicas on live nodes
    good: set[str] = field(default_factory=set)  # followers that committed every round so far
    lease: int = 0  # the lease the lock hangs on (0: not checked, in tests without etcd)
    rounds: int = 0  # committed rounds
    prepared: dict[str, str] = field(default_factory=dict)  # followers holding the current round
    round_id: str = ""
    round_active: bool = False
    round_lines: list[RefLine] = field(default_factory=list)  # the updates of the current round
    released: bool = False
    lost: bool = False  # the lease lapsed mid-push: nothing more is sent, nothing is recorded
    keep_intent: bool = False  # an earlier push's intent could not be settled: leave it for the next holder
    refusal: str | None = None  # why the replicas refused a ref update, for the user's git to show
    problems: list[str] = field(default_factory=list)

    @property
    def committed_on(self) -> int:
        return 1 + len(self.good)

    @property
    def intent(self) -> str:
        return f"{self.lock_token} {self.txn}"


@dataclass(frozen=True)
class Outcome:
    acknowledged: bool
    message: str


LOST = ("this node lost its cluster session during the push, so the update was not recorded; "
        "it may or may not have been applied: fetch and try again")


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
        holds: Callable[[int, float], bool] | None = None,
        checksum_of: Callable[[str, str], str | None] | None = None,
        straggler_deadline: float = 1.0,
        lease_margin: float = 0.5,
        alive_now: Callable[[], set[str]] | None = None,
        local_refs: Callable[[str], dict[str, str]] | None = None,
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
        # Whether a lease is still this node's and alive some seconds ahead (LeaseSession.holds).
        self.holds = holds
        # A replica's ref checksum, by node and storage id (for settling an unfinished push).
        self.checksum_of = checksum_of
        self.straggler_deadline = straggler_deadline
        self.lease_margin = lease_margin
        # Who is alive, read from etcd now rather than from the cached view (blocking).
        self.alive_now = alive_now
        # This node's refs on disk, by storage id (name -> oid), blocking.
        self.local_refs = local_refs
        self._pushes: dict[str, Push] = {}
        self._background_tasks: set[asyncio.Future[None]] = set()

    async def begin(self, storage_id: str) -> Push:
        # Lock, "no backup is reading", the placement and this push's intent in one etcd transaction:
        # a backup that raises its barrier afterwards waits for this lock, so no push slips into its read.
        txn = uuid.uuid4().hex
        held = await anyio.to_thread.run_sync(
            lambda: self.locks.acquire_for_push(storage_id, self.lock_wait, unless=keys.BACKUP_BARRIER, intent=txn)
        )
        push = Push(txn, storage_id, held.token, Placement(storage_id, {}), {}, lease=held.lease)
        try:
            if held.placement is None:
                raise NotFound("this repository has no replicas recorded")
            placement = Placement.from_kv(held.placement)
            if held.left_intent is not None:
                placement = await anyio.to_thread.run_sync(self._settle, push, placement, held)
            if self.name not in placement.up_to_date():
                raise Unavailable("this node's copy of the repository is not up to date; try again")
            followers = self._followers(placement, self.alive())
            if not has_quorum(1 + len(followers), len(placement.replicas)) and self.alive_now is not None:
                # The cached view may predate nodes that just came back: look again before refusing.
                followers = self._followers(placement, await anyio.to_thread.run_sync(self.alive_now))
            if not has_quorum(1 + len(followers), len(placement.replicas)):
                raise Unavailable(
                    f"only {1 + len(followers)} of the {len(placement.replicas)} replicas of this repository are "
                    "reachable and up to date; a push needs a majority"
                )
        except BaseException:
            await anyio.to_thread.run_sync(self._release, push)
            raise
        push.placement, push.followers, push.good = placement, followers, set(followers)
        self._pushes[push.txn] = push
        return push

    def _followers(self, placement: Placement, alive: set[str]) -> dict[str, str]:
        urls = self.urls()
        return {n: urls[n] for n in placement.up_to_date() if n != self.name and n in alive and n in urls}

    def _settle(self, push: Push, placement: Placement, held: Held) -> Placement:
        """An earlier push never recorded its outcome: compare the replicas before trusting them."""
        log.warning("cluster: the last push to %s did not finish (%s); comparing its replicas",
                    push.storage_id, held.left_intent)
        checksum_of = self.checksum_of
        if checksum_of is None:
            push.keep_intent = True
            raise Unavailable("the previous push to this repository did not finish; try again shortly")
        verdict, placement = intents.settle(self.etcd, placement, lambda node: checksum_of(node, push.storage_id),
                                            token=push.lock_token)
        if not verdict.settled:
            push.keep_intent = True
            raise Unavailable("the previous push to this repository did not finish and too few replicas answer to "
                              "check it; try again shortly")
        return placement

    def _holds(self, push: Push, margin: float = 0.0) -> bool:
        return self.holds is None or push.lease == 0 or self.holds(push.lease, margin)

    async def on_hook(self, txn: str, hook_state: str, lines: list[RefLine]) -> tuple[bool, str]:
        push = self._pushes.get(txn)
        if push is None:
            return False, "no push in progress with this id"
        if hook_state == "prepared":
            # HEAD shows up when the branch it points at moves; the branch itself is what replicates.
            lines = [line for line in lines if line[2].startswith("refs/")]
            push.round_active = bool(lines)
            push.round_lines = list(lines)
            if not lines:
                return True, "nothing to replicate"
            if push.lost or not self._holds(push, self.lease_margin):
                push.lost = True
                push.round_active = False
                push.refusal = "this node lost its cluster session; nothing was changed: try again"
                return False, push.refusal
            ok, message = await self._prepare(push, lines)
            if not ok:
                push.refusal = message
            return ok, message
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
        needed = len(push.placement.replicas) // 2  # followers that must agree, besides this node
        results = await self._answers(push, {
            name: self.peers.prepare(url, push.storage_id, push.round_id, lines, self.url, pack, push.lock_token)
            for name, url in candidates.items()
        }, needed=needed, counts=lambda answer: answer == mine)
        push.prepared = {}
        for (name, url), result in zip(candidates.items(), results, strict=True):
            if isinstance(result, BaseException):
                push.problems.append(f"{name}: {result}")
                push.good.discard(name)
                if isinstance(result, Straggler):
                    self._background(self._quietly(self.peers.abort(url, push.storage_id, push.round_id)))
            elif result != mine:
                push.problems.append(f"{name} voted for a different update")
                push.good.discard(name)
                push.prepared[name] = url  # holds locks: must be aborted
            else:
                push.prepared[name] = url
        votes = 1 + sum(1 for n in push.prepared if n in push.good)
        replicas = len(push.placement.replicas)
        if has_quorum(votes, replicas) and self._holds(push, self.lease_margin):
            return True, f"{votes} of {replicas} replicas agree"
        await self._abort(push)
        if not self._holds(push, self.lease_margin):
            push.lost = True
            return False, "this node lost its cluster session while the replicas voted; nothing was changed: try again"
        log.warning("push to %s refused: %d of %d replicas agreed (%s)", push.storage_id, votes, replicas,
                    "; ".join(push.problems))
        return False, (
            f"only {votes} of {replicas} replicas could take this update; "
            f"a majority is needed ({'; '.join(push.problems) or 'no answer'})"
        )

    async def _resolve_round(self, push: Push) -> None:
        """Commit or abort the followers' prepared round as git did here, judged from the refs on disk
        (left active, and so unacknowledged with its intent kept, when they match neither)."""
        if self.local_refs is None:
            return
        local_refs = self.local_refs
        try:
            refs = await anyio.to_thread.run_sync(lambda: local_refs(push.storage_id))
        except (BulwarkError, OSError) as exc:
            log.error("push %s to %s: cannot read this node's refs to finish the round: %s", push.txn,
                      push.storage_id, exc)
            return
        def now(ref: str) -> str:
            return refs.get(ref, ZERO_OID)
        if all(now(ref) == new for _old, new, ref in push.round_lines):
            log.warning("push %s to %s: git committed but its hook did not say so; committing the followers",
                        push.txn, push.storage_id)
            await self._commit(push)
            push.round_active = False
        elif all(now(ref) == old for old, _new, ref in push.round_lines):
            await self._abort(push)
            push.round_active = False

    async def _commit(self, push: Push) -> None:
        push.rounds += 1  # git committed here whatever happens next
        targets = {n: u for n, u in push.prepared.items() if n in push.good}
        stray = {n: u for n, u in push.prepared.items() if n not in push.good}
        if not self._holds(push):
            # The lock may be someone else's by now: tell nobody to commit; the intent stays behind.
            push.lost = True
            stray, targets = {**stray, **targets}, {}
        for url in stray.values():
            self._background(self._quietly(self.peers.abort(url, push.storage_id, push.round_id)))
        results = await self._answers(push, {
            n: self.peers.commit(u, push.storage_id, push.round_id, push.lock_token) for n, u in targets.items()
        }, needed=len(push.placement.replicas) // 2, counts=lambda answer: True)
        for name, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                push.problems.append(f"{name}: {result}")
                push.good.discard(name)
        push.prepared = {}

    async def _abort(self, push: Push) -> None:
        calls = [self._quietly(self.peers.abort(u, push.storage_id, push.round_id)) for u in push.prepared.values()]
        push.prepared = {}
        await asyncio.gather(*calls)

    async def _answers(self, push: Push, calls: dict[str, Awaitable[T]], *, needed: int,
                       counts: Callable[[T], bool]) -> list[T | BaseException]:
        """Every follower's answer (or error), in the order of ``calls``.

        Once ``needed`` answers count towards a majority, the others get ``straggler_deadline``
        more; a follower whose node loses its etcd session is given up on at once, and so is
        every follower if this node's own lease lapses.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        majority_at: float | None = None
        tasks = {name: asyncio.ensure_future(call) for name, call in calls.items()}
        late: set[str] = set()
        while True:
            # Recomputed each time: answers also arrive while the liveness check below is awaited.
            pending = {t for t in tasks.values() if not t.done()}
            if not pending:
                break
            agreed = sum(1 for t in tasks.values() if t.done() and not t.cancelled() and t.exception() is None
                         and counts(t.result()))
            wait = self.liveness_every
            if agreed >= needed:
                majority_at = loop.time() if majority_at is None else majority_at
                wait = majority_at + self.straggler_deadline - loop.time()
                if wait <= 0:
                    for name, task in tasks.items():
                        if not task.done():
                            late.add(name)
                            task.cancel()
                    break
            await asyncio.wait(pending, timeout=min(wait, self.liveness_every), return_when=asyncio.FIRST_COMPLETED)
            if all(t.done() for t in pending) or loop.time() - start < self.liveness_every:
                continue
            if not self._holds(push):
                for waiting in pending:
                    waiting.cancel()
                break
            try:
                alive = await anyio.to_thread.run_sync(self.alive)
            except BulwarkError:
                continue  # etcd unreachable: cannot tell; the peer timeout still bounds the wait
            for name, task in tasks.items():
                if not task.done() and name not in alive:
                    task.cancel()
        pending = {t for t in tasks.values() if not t.done()}
        if pending:
            await asyncio.wait(pending)
        answers: list[T | BaseException] = []
        for name, task in tasks.items():
            if name in late:
                answers.append(Straggler(f"{name} did not answer within {self.straggler_deadline:g}s of a majority"))
            elif task.cancelled():
                answers.append(PeerUnreachable(f"{name} lost its cluster session before it answered"))
            else:
                answers.append(task.exception() or task.result())
        return answers

    async def finish(self, push: Push) -> Outcome:
        """Record which replicas hold the push, release the lock, and say whether it is acknowledged."""
        self._pushes.pop(push.txn, None)
        try:
            if push.round_active:
                # git's "committed" or "aborted" never reached us (the hook could not call this node, as
                # when it shuts down): what git did is on disk, and the followers must do the same.
                await self._resolve_round(push)
            if push.round_active:
                push.keep_intent = True
                return Outcome(False, "this node could not tell whether the push was applied; fetch and try again")
            if push.rounds == 0:
                return Outcome(True, "no ref changed") if not push.lost else Outcome(False, LOST)
            if push.lost:
                push.keep_intent = True
                log.error("push %s to %s: this node lost its etcd session mid-push; nothing recorded, the next "
                          "holder of the lock compares the replicas", push.txn, push.storage_id)
                return Outcome(False, LOST)
            holders = {self.name, *push.good}
            try:
                recorded = await anyio.to_thread.run_sync(self._record, push, holders)
            except BulwarkError as exc:
                push.keep_intent = True
                log.error("push %s to %s committed but its generation was not recorded: %s",
                          push.txn, push.storage_id, exc)
                return Outcome(False, f"the push could not be recorded in the cluster state: {exc}")
            if not recorded:
                push.keep_intent = True
                log.error("push %s to %s: the repository lock was lost before the generations were recorded",
                          push.txn, push.storage_id)
                return Outcome(False, LOST)
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

    def _record(self, push: Push, holders: set[str]) -> bool:
        """Raise the holders' generations, release the lock and clear the intent in one transaction
        that compares the lock token (the fencing check) and the placement (compare-and-set).
        ``False`` if the lock is no longer this push's: then nothing is written."""
        key, lock = keys.placement(push.storage_id), keys.lock(push.storage_id)
        read, placement = push.placement.generation, push.placement
        for _ in range(10):
            # Only replicas still at the generation this push read: one marked outdated meanwhile stays so.
            replicas = {n: read + 1 if n in holders and g == read else g for n, g in placement.replicas.items()}
            result = self.etcd.txn(
                [Compare.unchanged(key, placement.revision), Compare.value_is(lock, push.lock_token)],
                [Op.put(key, placement.with_replicas(replicas).to_json()), Op.delete(lock),
                 Op.delete(keys.intent(push.storage_id))],
                [Op.get(lock), Op.get(key)],
            )
            if result.succeeded:
                push.released = True
                return True
            lock_kv, placement_kv = result.reads
            if not lock_kv or lock_kv[0].text != push.lock_token:
                return False
            if not placement_kv:
                raise NotFound("the repository was deleted during the push")
            placement = Placement.from_kv(placement_kv[0])
        raise Unavailable("the placement kept changing while the push was being recorded")

    async def cancel(self, push: Push) -> None:
        self._pushes.pop(push.txn, None)
        await self._abort(push)
        await anyio.to_thread.run_sync(self._release, push)

    def _release(self, push: Push) -> None:
        """Release the lock, and clear the intent unless something is left to settle."""
        try:
            if push.released:
                return
            ops = [Op.delete(keys.lock(push.storage_id))]
            if not push.keep_intent:
                ops.append(Op.delete(keys.intent(push.storage_id)))
            # If etcd cannot be reached the lease drops the lock, or, if the lease outlives the cut,
            # RepoLocks.drop_orphans does: the token is forgotten either way.
            with contextlib.suppress(Unavailable):
                self.etcd.txn([Compare.value_is(keys.lock(push.storage_id), push.lock_token)], ops)
            push.released = True
        finally:
            self.locks.forget(push.lock_token)

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    @staticmethod
    async def _quietly(call: Awaitable[None]) -> None:
        with contextlib.suppress(BulwarkError):
            await call


class Straggler(PeerUnreachable):
    """A follower that had not answered by the deadline, after a majority had."""
