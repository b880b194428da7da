"""Starting a cluster node's background work: its etcd session and its reconciler."""

from __future__ import annotations

import logging
from typing import Protocol

from bulwark.cluster import hooks
from bulwark.cluster.reconciler import Reconciler
from bulwark.errors import Unavailable
from bulwark.node import Node

log = logging.getLogger("bulwark.cluster")


class Loop(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


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
            lease=rt.membership.lease,
            interval=s.cluster_reconcile_interval,
            verify_every=s.cluster_verify_interval,
            replace_after=s.cluster_replace_after,
            retry_after=3 * s.cluster_reconcile_interval,
        )

    def start(self) -> None:
        rt = self.node.cluster
        assert rt is not None
        hooks.install(self.node.settings.data_dir)
        rt.start()
        try:
            log.info("cluster: %s", rt.check_own_replicas())
        except Unavailable as exc:
            log.warning("cluster: could not check this node's replicas yet: %s", exc)
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()


def cluster_loops_for(node: Node) -> ClusterLoops:
    return ClusterLoops(node)
