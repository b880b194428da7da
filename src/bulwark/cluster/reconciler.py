"""The reconciler: the one node that repairs the cluster.

Every node runs a :class:`Reconciler`; the one holding ``keys.RECONCILER`` (a key created
only if absent and attached to that node's lease) does the work, so a dead reconciler
loses the role with its lease and another node takes it on its next cycle.

Each cycle is Patroni-shaped: take a snapshot, :func:`decide` (pure, in ``cluster/replica_plan.py``),
act, and return one sentence. The decisions:

- ``Repair``: an outdated or building replica on a live node is copied from a good one; after
  ``rebuild_after`` failed repairs in a row it is rebuilt from scratch instead.
- ``AddReplica``: a repository with fewer than its RF replicas on usable nodes gets new
  ones (after ``replace_after`` seconds for a missing node, at once for an evacuating one).
- ``DropReplica``: a repository above its RF loses a replica, only while RF up-to-date
  replicas on usable nodes remain without it.
- ``MarkOutdated``: up-to-date replicas whose ref checksums disagree with the majority
  (verified every ``verify_every`` seconds under the repository's lock, and at once for the
  repositories of a node that comes back with a new session) become building.
- ``DataLoss``: no live up-to-date replica is left. Reported, never acted on: only an
  administrator may accept the loss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bulwark.cluster import keys, state
from bulwark.cluster.election import Election
from bulwark.cluster.locks import RepoLocks
from bulwark.cluster.replica_plan import (
    REBUILD_AFTER,
    Action,
    AddReplica,
    DataLoss,
    DropReplica,
    MarkOutdated,
    Repair,
    RepairFailure,
    decide,
    still_failing,
    usable,
)
from bulwark.cluster.state import BUILDING, ClusterSnapshot, Placement
from bulwark.errors import BulwarkError, Unavailable
from bulwark.etcd import Etcd, EtcdUnavailable

log = logging.getLogger("bulwark.cluster.reconciler")

class Peers(Protocol):
    def sync(self, node_url: str, storage_id: str, source_url: str, *, rebuild: bool = False) -> str:
        """Make the node's copy identical to the source's and set its generation to the highest;
        ``rebuild``: delete the copy first and fetch all of it."""
        ...

    def checksum(self, node_url: str, storage_id: str) -> str | None:
        """The replica's ref checksum; None if the node has no copy."""
        ...

    def remove(self, node_url: str, storage_id: str) -> None:
        """Delete the node's copy (idempotent)."""
        ...


@dataclass
class Counts:
    repaired: int = 0
    added: int = 0
    dropped: int = 0
    marked: int = 0
    failed: int = 0
    verified: int = 0
    to_verify: int = 0  # queued for the next cycles
    data_loss: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        text = (
            f"repaired {self.repaired} replicas, added {self.added}, dropped {self.dropped}, "
            f"marked {self.marked} outdated; {len(self.data_loss)} repositories without an up-to-date replica"
        )
        if self.verified:
            text += f"; verified {self.verified} repositories"
            if self.to_verify:
                text += f" ({self.to_verify} more to verify)"
        if self.failed:
            text += f"; {self.failed} actions failed"
        return text


def returned_nodes(before: Mapping[str, int], now: Mapping[str, int]) -> set[str]:
    """Nodes whose session is new since the last look (empty on the first look: nothing to compare)."""
    if not before:
        return set()
    return {node for node, lease in now.items() if before.get(node) != lease}


class Reconciler:
    def __init__(
        self,
        etcd: Etcd,
        peers: Peers,
        locks: RepoLocks,
        *,
        node: str,
        lease: Callable[[], int],
        interval: float = 10.0,
        verify_every: float = 300.0,
        verify_budget: float = 2.0,
        replace_after: float = 60.0,
        retry_after: float = 60.0,
        max_actions: int = 20,
        rebuild_after: int = REBUILD_AFTER,
        clock: Callable[[], float] = time.time,
        read_snapshot: Callable[[], ClusterSnapshot] | None = None,
    ) -> None:
        self.etcd = etcd
        # The state a cycle decides from; a node passes its watched copy of the placements.
        self.read_snapshot = read_snapshot or (lambda: state.snapshot(etcd))
        self.peers = peers
        self.locks = locks
        self.node = node
        self.lease = lease  # the node's session lease: leadership dies with it
        self.election = Election(etcd, keys.RECONCILER, node, lease, job="the reconciler")
        self.interval = interval
        self.verify_every = verify_every
        # Seconds of checksum comparisons per cycle: a pass over every repository is spread over as
        # many cycles as it needs, so a large installation's repairs never wait behind a whole pass.
        self.verify_budget = verify_budget
        # Queues, taken from the front: a pass over 100,000 repositories must not shift a list each time.
        self._to_verify: deque[str] = deque()  # the current pass's repositories not yet compared, in order
        self._urgent: deque[str] = deque()  # repositories of nodes back with a new session: compared first
        self.replace_after = replace_after
        self.retry_after = retry_after
        self.max_actions = max_actions
        self.rebuild_after = rebuild_after
        self.clock = clock
        self.missing_since: dict[str, float] = {}
        self.failed_at: dict[str, float] = {}  # storage id -> when an action on it last failed
        # (storage id, node) -> its last failed repair; published, and taken over by the next leader.
        self.repair_failures: dict[tuple[str, str], RepairFailure] = {}
        self._leading = False
        self.verified_at: float | None = None
        self.sessions: dict[str, int] = {}  # node -> its session's lease, as of the last cycle
        self.last_sentence = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- election ------------------------------------------------------------------------

    def campaign(self) -> str | None:
        """Become the reconciler if nobody is; the name of whoever is (None: nobody)."""
        return self.election.campaign()

    def resign(self) -> None:
        self.election.resign()

    # -- one cycle -----------------------------------------------------------------------

    def run_once(self) -> str:
        try:
            return self._cycle()
        except EtcdUnavailable as exc:
            return f"etcd is unreachable, nothing done: {exc.message}"
        except Unavailable as exc:
            return f"nothing done: {exc.message}"

    def _cycle(self) -> str:
        leader = self.campaign()
        if leader != self.node:
            # What a former term learnt about missing nodes would be stale by the next one.
            self.missing_since.clear()
            self.verified_at = None
            self.sessions = {}
            self._leading = False
            return f"not the reconciler ({leader} is)" if leader else "not the reconciler (no etcd session)"
        now, started = self.clock(), time.monotonic()
        if not self._leading:
            # A new term goes on counting where the last leader's failed repairs left off.
            self.repair_failures = {(f.storage_id, f.node): f for f in published_failures(read_report(self.etcd))}
            self._leading = True
        snap = self.read_snapshot()
        self._track_missing(snap, now)
        self.repair_failures = still_failing(snap, self.repair_failures)
        counts = Counts()
        returned = returned_nodes(self.sessions, snap.sessions)
        self.sessions = dict(snap.sessions)
        if returned:
            # A node back from a crash, a pause or a partition may hold refs the others do not.
            self._urgent.extend(s for s in sorted(snap.placements) if set(returned) & set(snap.placements[s].replicas))
        if not self._to_verify and (self.verified_at is None or now - self.verified_at >= self.verify_every):
            self._to_verify = deque(sorted(snap.placements))
            self.verified_at = now
        checksums = self._verify_some(snap) if self._urgent or self._to_verify else None
        if checksums is not None:
            counts.verified = len(checksums)
            counts.to_verify = len(self._urgent) + len(self._to_verify)
        self.failed_at = {s: t for s, t in self.failed_at.items() if now - t < self.retry_after}
        actions = decide(
            snap, now, self.missing_since, replace_after=self.replace_after, checksums=checksums,
            max_actions=self.max_actions, skip=set(self.failed_at),
            failed_repairs={k: f.attempts for k, f in self.repair_failures.items()}, rebuild_after=self.rebuild_after,
        )
        for action in actions:
            if isinstance(action, DataLoss):
                counts.data_loss.append(action.storage_id)
                continue
            try:
                self._act(snap, action, counts)
            except Exception as exc:  # one repository's trouble must not stop the others
                counts.failed += 1
                self.failed_at[action.storage_id] = now
                self._note_failure(action, exc, now)
                log.warning("reconciler: %s failed: %s", action, exc)
            else:
                if isinstance(action, Repair | AddReplica):
                    self.repair_failures.pop((action.storage_id, action.node), None)
        sentence = counts.sentence()
        self._publish(sentence, counts, now, time.monotonic() - started)
        return sentence

    def _note_failure(self, action: Action, exc: Exception, now: float) -> None:
        if not isinstance(action, Repair | AddReplica):
            return
        key = (action.storage_id, action.node)
        before = self.repair_failures.get(key)
        message = exc.message if isinstance(exc, BulwarkError) else f"{exc.__class__.__name__}: {exc}"
        verb = "rebuild" if isinstance(action, Repair) and action.rebuild else "repair"
        self.repair_failures[key] = RepairFailure(
            action.storage_id, action.node, (before.attempts if before else 0) + 1,
            f"{verb} from {action.source} failed: {message}"[:500], now,
        )

    def _track_missing(self, snap: ClusterSnapshot, now: float) -> None:
        known = {n.name for n in snap.config.nodes} | {n for p in snap.placements.values() for n in p.replicas}
        for node in known:
            if snap.is_alive(node):
                self.missing_since.pop(node, None)
            else:
                self.missing_since.setdefault(node, now)
        for node in set(self.missing_since) - known:
            del self.missing_since[node]

    def _verify_some(self, snap: ClusterSnapshot) -> dict[str, dict[str, str | None]]:
        """Ref checksums of the queued repositories, urgent ones first, for up to ``verify_budget``
        seconds (at least one repository a cycle); the rest stay queued for the next cycles."""
        found: dict[str, dict[str, str | None]] = {}
        deadline = time.monotonic() + self.verify_budget
        for queue in (self._urgent, self._to_verify):
            while queue:
                self._verify_one(snap, queue.popleft(), found)
                if time.monotonic() >= deadline:
                    return found
        return found

    def _verify_one(self, snap: ClusterSnapshot, storage_id: str, found: dict[str, dict[str, str | None]]) -> None:
        """Add ``storage_id``'s checksums to ``found`` if it has two or more live up-to-date replicas."""
        if storage_id not in snap.placements:
            return  # removed since it was queued
        serving = [n for n in snap.serving_replicas(storage_id) if snap.url_of(n)]
        if len(serving) < 2:
            return
        token = self.locks.try_acquire(storage_id)
        if token is None:
            return  # a write is under way; the next pass
        try:
            fresh = state.get_placement(self.etcd, storage_id)
            if fresh is None or fresh.revision != snap.placements[storage_id].revision:
                return  # changed since the snapshot: the answers would not match it
            votes: dict[str, str | None] = {}
            for node in serving:
                try:
                    votes[node] = self.peers.checksum(snap.url_of(node) or "", storage_id)
                except BulwarkError as exc:
                    log.warning("reconciler: no checksum of %s from %s: %s", storage_id, node, exc)
            if len(votes) >= 2:
                found[storage_id] = votes
        finally:
            self.locks.release(storage_id, token)

    def _act(self, snap: ClusterSnapshot, action: Action, counts: Counts) -> None:
        if isinstance(action, Repair):
            self.peers.sync(_url(snap, action.node), action.storage_id, _url(snap, action.source),
                            rebuild=action.rebuild)
            counts.repaired += 1
            how = "rebuilt" if action.rebuild else "repaired"
            log.info("reconciler: %s %s on %s from %s", how, action.storage_id, action.node, action.source)
        elif isinstance(action, AddReplica):
            node = action.node

            def add(p: Placement) -> Placement:
                return p if node in p.replicas else p.with_replicas({**p.replicas, node: BUILDING})

            if state.update_placement(self.etcd, action.storage_id, add) is None:
                return  # the repository was deleted meanwhile
            self.peers.sync(_url(snap, node), action.storage_id, _url(snap, action.source))
            counts.added += 1
            log.info("reconciler: added %s on %s from %s", action.storage_id, node, action.source)
        elif isinstance(action, DropReplica):
            self._drop(snap, action, counts)
        elif isinstance(action, MarkOutdated):
            marked = set(action.nodes)

            def mark(p: Placement) -> Placement:
                return p.with_replicas(
                    {n: BUILDING if n in marked and g == action.generation else g for n, g in p.replicas.items()}
                )

            after = state.update_placement(self.etcd, action.storage_id, mark)
            counts.marked += len([n for n in marked if after and after.replicas.get(n) == BUILDING])
            log.warning("reconciler: %s differs on %s; marked outdated", action.storage_id, state.names(marked))

    def _drop(self, snap: ClusterSnapshot, action: DropReplica, counts: Counts) -> None:
        node = action.node

        def drop(p: Placement) -> Placement:
            # Re-checked on the fresh placement: a push since the snapshot may have outdated others.
            rf = snap.config.effective_rf(p.wanted_rf)
            good = [n for n in p.up_to_date() if n != node and usable(snap, n)]
            if node not in p.replicas or len(p.replicas) <= rf or len(good) < rf:
                return p
            return p.with_replicas({n: g for n, g in p.replicas.items() if n != node})

        after = state.update_placement(self.etcd, action.storage_id, drop)
        if after is None or node in after.replicas:
            return
        counts.dropped += 1
        log.info("reconciler: dropped %s from %s", action.storage_id, node)
        url = snap.url_of(node)
        if url and snap.is_alive(node):
            try:
                self.peers.remove(url, action.storage_id)
            except BulwarkError as exc:  # the copy is orphaned, not harmful: nothing routes to it
                log.warning("reconciler: could not delete %s's copy of %s: %s", node, action.storage_id, exc)

    def _publish(self, sentence: str, counts: Counts, now: float, seconds: float) -> None:
        report: dict[str, Any] = {
            "leader": self.node,
            "sentence": sentence,
            "at": now,
            "seconds": round(seconds, 3),  # how long the cycle took
            "to_verify": counts.to_verify,
            "counts": {
                "repaired": counts.repaired,
                "added": counts.added,
                "dropped": counts.dropped,
                "marked_outdated": counts.marked,
                "failed": counts.failed,
                "verified": counts.verified,
                "data_loss": len(counts.data_loss),
            },
            "data_loss": counts.data_loss[:100],
            # Each replica that failed its last repair, and why: `bulwark cluster status -v` shows them.
            "repair_failures": [f.to_json() for _k, f in sorted(self.repair_failures.items())][:100],
            "verified_at": self.verified_at,
        }
        self.etcd.put(keys.REPORT, json.dumps(report, sort_keys=True))

    # -- thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bulwark-reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(Unavailable):
            self.resign()  # another node takes over at its next cycle, not after our lease's TTL

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sentence = self.run_once()
            except Exception as exc:  # the loop must survive anything a cycle meets
                log.exception("reconciler cycle failed")
                sentence = f"cycle failed: {exc}"
            if sentence != self.last_sentence:
                log.info("reconciler: %s", sentence)
                self.last_sentence = sentence
            self._stop.wait(self.interval)


def read_report(etcd: Etcd) -> dict[str, Any] | None:
    """The last cycle's report, as the reconciler published it."""
    kv = etcd.get(keys.REPORT)
    if kv is None:
        return None
    try:
        report: dict[str, Any] = json.loads(kv.value)
    except ValueError:
        return None
    return report


def published_failures(report: Mapping[str, Any] | None) -> list[RepairFailure]:
    """The failed repairs a reconciler report lists (an older report has none)."""
    found = []
    for raw in (report or {}).get("repair_failures") or []:
        try:
            found.append(RepairFailure.from_json(raw))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _url(snap: ClusterSnapshot, node: str) -> str:
    url = snap.url_of(node) or (snap.alive[node].url if node in snap.alive else None)
    if not url:
        raise Unavailable(f"no URL is known for node {node}")
    return url
