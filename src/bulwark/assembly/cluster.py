"""Starting a cluster node's background work: its etcd session and its reconciler."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from bulwark.cluster import hooks, intents
from bulwark.cluster.reconciler import Reconciler
from bulwark.errors import BulwarkError, Unavailable
from bulwark.node import Node

log = logging.getLogger("bulwark.cluster")
# How long a start waits for the watched copy of the placements before reading them itself.
PLACEMENTS_WAIT = 10.0


class Loop(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class IntentSweeper:
    """Every cycle: on every node, release the locks it orphaned (cluster/locks.py); on the elected
    reconciler's node, settle pushes whose leader died mid-way."""

    def __init__(self, node: Node, interval: float) -> None:
        self.node = node
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = ""

    def run_once(self) -> str:
        rt = self.node.cluster
        assert rt is not None
        if rt.fenced_reason():
            return "not the reconciler"
        rt.locks.drop_orphans()
        if rt.snapshot().reconciler != rt.name:
            return "not the reconciler"
        return intents.sweep(rt.etcd, rt.locks, rt.checksum_of)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sentence = self.run_once()
            except BulwarkError as exc:
                sentence = f"cannot settle unfinished pushes now: {exc}"
            except Exception:
                log.exception("cluster: unexpected error settling unfinished pushes")
                continue
            if sentence != self._last and sentence not in ("no unfinished pushes", "not the reconciler"):
                log.info("cluster: %s", sentence)
            self._last = sentence

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bulwark-intents", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class ClusterLoops:
    """The session first (a node must be alive before it serves), then the reconciler."""

    def __init__(self, node: Node) -> None:
        rt = node.cluster
        assert rt is not None
        s = node.settings
        self.node = node
        self.reconciler = Reconciler(
            rt.etcd,
            rt.peers,
            rt.locks,
            node=rt.name,
            lease=rt.session.lease,
            interval=s.cluster_reconcile_interval,
            verify_every=s.cluster_verify_interval,
            verify_budget=s.cluster_verify_budget,
            replace_after=s.cluster_replace_after,
            retry_after=3 * s.cluster_reconcile_interval,
            read_snapshot=rt.full_snapshot,
        )
        self.sweeper = IntentSweeper(node, max(s.cluster_reconcile_interval, 0.5))

    def start(self) -> None:
        rt = self.node.cluster
        assert rt is not None
        hooks.install(self.node.settings.data_dir)
        rt.start()
        # The watched copy of the placements is loading: checking against it, rather than
        # reading every placement a second time, halves the reads a start makes.
        rt.placements.wait_ready(PLACEMENTS_WAIT)
        try:
            log.info("cluster: %s", rt.check_own_replicas())
        except Unavailable as exc:
            log.warning("cluster: could not check this node's replicas yet: %s", exc)
        self.reconciler.start()
        self.sweeper.start()

    def stop(self) -> None:
        self.sweeper.stop()
        self.reconciler.stop()


def cluster_loops_for(node: Node) -> ClusterLoops:
    return ClusterLoops(node)
