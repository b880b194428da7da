"""The HA loop of a running node: one thread, one cycle at a time.

On a replica each cycle is a :class:`~bulwark.ha.replicator.Replicator` cycle, and a
:class:`~bulwark.ha.watch.PrimaryWatch` beside it asks whether the primary is there.
On a primary it checks that no peer knows a newer epoch (fencing itself if one
does), notes which replicas it could not reach to ask, and trims the change log
past what every replica has applied.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from bulwark.clock import Clock
from bulwark.errors import BulwarkError
from bulwark.ha import state as ha_state
from bulwark.ha.client import peer_status
from bulwark.ha.gate import ReplicationGate
from bulwark.ha.health import FenceDecision, decide_fencing, observe
from bulwark.ha.replicator import Replicator
from bulwark.ha.state import HAState, PeerCheck
from bulwark.ha.watch import Ask, PrimaryWatch
from bulwark.processes import pid_exists
from bulwark.roles import NodeRole
from bulwark.store import Store
from bulwark.store.changes import ChangeLog

log = logging.getLogger("bulwark.ha")

# Changes kept on a node that has no replica, so a brief teardown/setup needs no re-seed.
KEEP_WITHOUT_REPLICAS = 10_000


class PrimaryDuties:
    def __init__(self, store: Store, changelog: ChangeLog, clock: Clock, *, check_every: float = 5.0,
                 ask: Ask = peer_status) -> None:
        self.store = store
        self.changelog = changelog
        self.clock = clock
        self.check_every = timedelta(seconds=check_every)
        self.ask = ask
        self._last_check: datetime | None = None
        self._unreachable: set[str] = set()  # replicas this process has warned about

    def check_epochs(self, ha: HAState) -> str:
        """Fence this node if any known peer is primary at a newer epoch; note who could not be asked."""
        epochs: dict[str, int] = {}
        earlier = ha_state.load_replica_checks(self.store)
        checks: dict[str, PeerCheck] = {}
        for replica in ha_state.load_replicas(self.store):
            if not replica.url:
                continue
            check = earlier.get(replica.node_id)
            if check is None or check.url != replica.url:
                check = PeerCheck(replica.url, since=self.clock.now())
            answer: dict[str, Any] | str
            try:
                answer = self.ask(replica.url, 3.0)
            except BulwarkError as exc:
                answer = exc.message
            checks[replica.node_id] = observe(check, answer, self.clock.now())
            if isinstance(answer, str):
                self._note_unreachable(replica.node_id, replica.url, answer)
                continue
            if replica.node_id in self._unreachable:
                self._unreachable.discard(replica.node_id)
                log.info("ha: replica %s answers again at %s", replica.node_id, replica.url)
            epoch = answer.get("epoch")
            if isinstance(epoch, int):
                epochs[replica.url] = epoch
        ha_state.save_replica_checks(self.store, checks)
        decision, reason = decide_fencing(ha.epoch, epochs)
        if decision is FenceDecision.FENCE:
            ha_state.save(self.store, ha.with_(fenced=reason))
            return f"fenced this node: {reason}"
        unreachable = sorted(n for n, c in checks.items() if c.error is not None)
        if unreachable:
            return f"still primary: {reason}, but could not ask replicas {', '.join(unreachable)}"
        return f"still primary: {reason}"

    def _note_unreachable(self, node_id: str, url: str, error: str) -> None:
        if node_id in self._unreachable:
            return
        self._unreachable.add(node_id)
        # Without its answer this primary cannot tell whether that replica was promoted over it.
        log.warning("ha: replica %s at %s does not answer, so this primary cannot check its epoch: %s",
                    node_id, url, error)

    def trim(self) -> str:
        replicas = ha_state.load_replicas(self.store)
        if replicas:
            keep_after = min(r.position for r in replicas)
        else:
            keep_after = self.changelog.last_seq() - KEEP_WITHOUT_REPLICAS
        dropped = self.changelog.trim(keep_after) if keep_after > 0 else 0
        return f"trimmed {dropped} changes" if dropped else "nothing to trim"

    def run_once(self, ha: HAState) -> str:
        now = self.clock.now()
        if self._last_check is not None and now - self._last_check < self.check_every:
            return "idle"
        self._last_check = now
        if ha.role == NodeRole.STANDALONE:
            return self.trim()
        return f"{self.check_epochs(ha)}; {self.trim()}"


class HALoop:
    """``resume`` finishes a promotion whose process died part-way (it had lowered the
    replication flag, perhaps fenced the old primary: left so, the pair would take no writes)."""

    def __init__(self, store: Store, replicator: Replicator, primary: PrimaryDuties,
                 watch: PrimaryWatch | None = None, gate: ReplicationGate | None = None,
                 resume: Callable[[], str] | None = None, alive: Callable[[int], bool] = pid_exists) -> None:
        self.store = store
        self.resume = resume
        self.alive = alive
        self.replicator = replicator
        self.gate = gate
        self.primary = primary
        self.watch = watch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_sentence = ""

    def run_once(self) -> tuple[str, float]:
        """One cycle: (what happened, seconds to pause before the next)."""
        self.replicator.tidy()  # also once promoted: a fetch cut off just before must not stay
        ha = ha_state.load(self.store)
        if ha.role == NodeRole.HA_REPLICA and ha.promoting is not None:
            if self.resume is None or self.alive(ha.promoting):
                return f"a promotion is under way (process {ha.promoting})", 1.0
            log.warning("ha: the promotion begun by process %s did not finish (the process is gone); finishing it",
                        ha.promoting)
            return self.resume(), 1.0
        if ha.role == NodeRole.HA_REPLICA and not ha.replicating:
            return "replication is stopped", 1.0
        if ha.role == NodeRole.HA_REPLICA and not ha.fenced:
            with self.gate.cycle() if self.gate is not None else contextlib.nullcontext(True) as ours:
                if not ours:
                    return "replication waits: another process (a promotion) holds this data directory's gate", 1.0
                sentence = self.replicator.run_once()
            # The replicator paces itself with a long poll; pause only after a failure.
            return sentence, 1.0 if self.replicator.failing else 0.0
        if ha.fenced:
            return f"fenced: {ha.fenced}", 1.0
        return self.primary.run_once(ha), 1.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bulwark-ha", daemon=True)
        self._thread.start()
        if self.watch is not None:
            self.watch.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self.watch is not None:
            self.watch.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sentence, pause = self.run_once()
            except Exception as exc:  # the loop must survive anything a cycle meets
                log.exception("HA cycle failed")
                sentence, pause = f"cycle failed: {exc}", 1.0
            if sentence != self.last_sentence and sentence != "idle":
                log.info("ha: %s", sentence)
                self.last_sentence = sentence
            self._stop.wait(pause)
