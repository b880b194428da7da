"""Gathering a serving node's facts, cached so that scrapes and page refreshes stay cheap.

A scrape or a status page refresh reads the facts, and the cluster's state with them (one etcd
transaction), at most twice a second, so a dead node shows at most a second after its lease runs
out; the etcd members' health (one request per member) is asked at most every five seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from bulwark.cluster.report import cluster_report
from bulwark.errors import BulwarkError
from bulwark.ha import state as ha_state
from bulwark.ha.health import Thresholds as LagThresholds
from bulwark.ha.report import replication_report
from bulwark.monitoring import running, system
from bulwark.monitoring.checks import Thresholds
from bulwark.monitoring.facts import ClusterFacts, NodeFacts, ReplicationFacts, WebhookFacts
from bulwark.node import Node
from bulwark.roles import NodeRole

if TYPE_CHECKING:
    from bulwark.cluster.runtime import ClusterRuntime

FACTS_MAX_AGE = 0.5
SNAPSHOT_MAX_AGE = 0.5
ETCD_HEALTH_MAX_AGE = 5.0


class ClusterView:
    """The cluster as one member sees it, re-read at most every ``max_age`` seconds."""

    def __init__(self, runtime: ClusterRuntime, *, max_age: float = SNAPSHOT_MAX_AGE,
                 health_max_age: float = ETCD_HEALTH_MAX_AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.max_age = max_age
        self.health_max_age = health_max_age
        self.clock = clock
        self._lock = threading.Lock()  # one reader at a time; the others wait for its answer
        self._facts: tuple[float, ClusterFacts] | None = None
        self._health: tuple[float, dict[str, bool]] | None = None

    def current(self) -> ClusterFacts:
        with self._lock:
            if self._facts is not None and self.clock() - self._facts[0] < self.max_age:
                return self._facts[1]
            facts = self._read()
            self._facts = (self.clock(), facts)
            return facts

    def _read(self) -> ClusterFacts:
        rt = self.runtime
        session = rt.session.connected()
        try:
            snapshot = rt.full_snapshot()  # this view is the cache
        except BulwarkError as exc:
            return ClusterFacts(rt.name, session, etcd_reachable=False, report=None, error=exc.message)
        report = cluster_report(snapshot, etcd_health=self._etcd_health(list(snapshot.config.etcd)))
        return ClusterFacts(rt.name, session, etcd_reachable=True, report=report)

    def _etcd_health(self, endpoints: list[str]) -> Mapping[str, bool]:
        if self._health is not None and self.clock() - self._health[0] < self.health_max_age:
            return self._health[1]
        with ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
            health = dict(zip(endpoints, pool.map(self.runtime.etcd.endpoint_healthy, endpoints), strict=True))
        self._health = (self.clock(), health)
        return health


class NodeMonitor:
    """A serving node's facts, gathered at most every ``max_age`` seconds, and its thresholds."""

    def __init__(self, node: Node, *, max_age: float = FACTS_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.thresholds = Thresholds.from_settings(node.settings)
        self.cluster_view = ClusterView(node.cluster) if node.cluster is not None else None
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, NodeFacts] | None = None

    def facts(self) -> NodeFacts:
        with self._lock:
            if self._cached is not None and self.clock() - self._cached[0] < self.max_age:
                return self._cached[1]
            facts = node_facts(self.node, self.cluster_view)
            self._cached = (self.clock(), facts)
            return facts


def node_facts(node: Node, cluster_view: ClusterView | None = None) -> NodeFacts:
    """Read everything the checks judge, from this node's process (blocking: run it in a thread)."""
    sample = system.sample(node.settings.data_dir)
    rt = node.cluster
    if rt is not None:
        view = cluster_view or ClusterView(rt)
        cluster = view.current()
        if not cluster.etcd_reachable:
            # Every further read would wait for etcd's timeout again; what we know is enough.
            reason = f"etcd is unreachable: {cluster.error}"
            return NodeFacts(rt.name, rt.url, NodeRole.CLUSTER_MEMBER, False, reason, None, rt.fenced_reason(),
                             sample, cluster=cluster)
        serving, reason = _healthy(node)
        maintenance = _maintenance(node)
        if maintenance is None and cluster.report is not None:
            maintenance = next((n.maintenance for n in cluster.report.nodes if n.name == rt.name), None)
        return NodeFacts(rt.name, rt.url, NodeRole.CLUSTER_MEMBER, serving, reason, maintenance, rt.fenced_reason(),
                         sample, cluster=cluster)
    serving, reason = _healthy(node)
    ha = node.ha()
    replication = None
    if node.role in (NodeRole.HA_PRIMARY, NodeRole.HA_REPLICA):
        limits = LagThresholds(primary_timeout=node.settings.ha_primary_timeout)
        report = replication_report(node.store, node.replication_log(), now=node.clock.now(), limits=limits)
        replication = ReplicationFacts.from_report(report)
    url = running.node_url(node.settings, running.read(node.settings.data_dir))
    return NodeFacts(ha_state.node_id(node.store), url, node.role, serving, reason,
                     _maintenance(node), ha.fenced or None, sample, replication=replication,
                     webhooks=_webhooks(node))


def _webhooks(node: Node) -> WebhookFacts | None:
    if node.webhooks is None:
        return None
    f = node.webhooks.hooks.figures()
    age = (node.clock.now() - f.oldest_pending_at).total_seconds() if f.oldest_pending_at else 0.0
    return WebhookFacts(f.pending, max(age, 0.0), f.failing_hooks, f.gave_up)


def _healthy(node: Node) -> tuple[bool, str]:
    try:
        return node.healthy()
    except BulwarkError as exc:
        return False, exc.message


def _maintenance(node: Node) -> str | None:
    try:
        state = node.store.get_maintenance()
    except BulwarkError:
        return None
    return (state.message or "") if state.enabled else None
