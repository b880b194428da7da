"""What a node knows about itself at one moment, as frozen values the checks judge.

Built by :mod:`bulwark.monitoring.gather` (a serving node) or by ``bulwark status`` (from the
data dir and etcd); judged by :mod:`bulwark.monitoring.checks`; exported by the metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bulwark.cluster.report import ClusterReport
from bulwark.ha.health import Level
from bulwark.monitoring.system import SystemSample
from bulwark.node import NodeRole


@dataclass(frozen=True)
class ReplicaLag:
    """One replica as its HA primary sees it."""

    node_id: str
    url: str
    level: Level
    seconds_since_seen: float | None
    lag_changes: int


@dataclass(frozen=True)
class ReplicationFacts:
    """HA replication from this node's side: a replica's lag, or a primary's replicas."""

    level: Level
    summary: str
    primary_url: str | None = None
    replicating: bool | None = None
    lag_seconds: float | None = None
    lag_changes: int | None = None
    pending: int | None = None
    faulty: int | None = None
    replicas: tuple[ReplicaLag, ...] = ()

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> ReplicationFacts | None:
        """From :func:`bulwark.ha.report.replication_report`; None on a node without replication."""
        level = Level[report["level"]]
        if report["role"] == "ha-replica":
            repos = report["repositories"]
            worst = max(report["streams"], key=lambda s: Level[s["level"]])
            lag = report.get("lag_seconds")
            return cls(
                level=level,
                summary=f"{worst['name']}: {worst['detail']}",
                primary_url=report.get("primary_url"),
                replicating=bool(report.get("replicating")),
                lag_seconds=math.inf if lag is None else float(lag),
                lag_changes=int(report.get("lag_changes") or 0),
                pending=int(repos["pending"]),
                faulty=int(repos["faulty"]),
            )
        if report["role"] == "ha-primary":
            replicas = tuple(
                ReplicaLag(r["node_id"], r["url"], Level[r["level"]], r["seconds_since_seen"], int(r["lag_changes"]))
                for r in report["replicas"]
            )
            late = [r for r in replicas if r.level is not Level.OK]
            if report.get("detail"):
                summary = str(report["detail"])
            elif late:
                summary = ", ".join(f"replica {r.node_id} last seen {_ago(r.seconds_since_seen)}" for r in late)
            else:
                summary = f"{len(replicas)} replicas in contact"
            return cls(level=level, summary=summary, replicas=replicas)
        return None


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.0f}s ago"


@dataclass(frozen=True)
class ClusterFacts:
    """The cluster as one member sees it."""

    node: str
    session: bool  # this node holds its etcd session (its lease is alive)
    etcd_reachable: bool
    report: ClusterReport | None  # None when etcd could not be read
    error: str | None = None

    def node_alive(self, name: str) -> bool | None:
        if self.report is None:
            return None
        return next((n.alive for n in self.report.nodes if n.name == name), None)


@dataclass(frozen=True)
class NodeFacts:
    name: str
    url: str
    role: NodeRole
    serving: bool  # a load balancer should send traffic here
    reason: str  # why (not) serving
    maintenance: str | None  # in maintenance (or drained): its message, possibly ""
    fenced: str | None  # why this node takes no writes, when fenced
    system: SystemSample
    replication: ReplicationFacts | None = None
    cluster: ClusterFacts | None = None
