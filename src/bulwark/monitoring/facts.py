"""What a node knows about itself at one moment, as frozen values the checks judge.

Built by :mod:`bulwark.monitoring.gather` (a serving node) or by ``bulwark status`` (from the
data dir and etcd); judged by :mod:`bulwark.monitoring.checks`; exported by the metrics.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from bulwark.cluster.report import ClusterReport
from bulwark.ha.health import PrimaryState
from bulwark.levels import Level
from bulwark.monitoring.system import SystemSample
from bulwark.roles import NodeRole


@dataclass(frozen=True)
class ReplicaLag:
    """One replica as its HA primary sees it."""

    node_id: str
    url: str
    level: Level
    seconds_since_seen: float | None
    lag_changes: int
    reachable: bool | None = None  # whether the primary's epoch check reached it (None: not checked lately)
    reach: str = ""


@dataclass(frozen=True)
class PrimaryFacts:
    """An HA replica's primary, as the replica's watch last found it."""

    state: PrimaryState
    seconds_since_answer: float | None
    detail: str

    @property
    def up(self) -> bool:
        """It answered within the timeout (or has not had the whole timeout to)."""
        return self.state in (PrimaryState.UP, PrimaryState.NOT_PRIMARY, PrimaryState.LATE)


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
    primary: PrimaryFacts | None = None  # on a replica

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> ReplicationFacts | None:
        """From :func:`bulwark.ha.report.replication_report`; None on a node without replication."""
        level = Level[report["level"]]
        if report["role"] == NodeRole.HA_REPLICA:
            repos = report["repositories"]
            # On a tie the primary's stream speaks: a primary that is gone explains the rest, and says what to do.
            worst = max(report["streams"], key=lambda s: (Level[s["level"]], s["name"] == "primary"))
            lag = report.get("lag_seconds")
            watch = report.get("primary")
            primary = None
            if isinstance(watch, dict):
                primary = PrimaryFacts(PrimaryState(watch["state"]), watch.get("seconds_since_answer"),
                                       str(watch["detail"]))
            return cls(
                level=level,
                summary=f"{worst['name']}: {worst['detail']}",
                primary_url=report.get("primary_url"),
                replicating=bool(report.get("replicating")),
                lag_seconds=math.inf if lag is None else float(lag),
                lag_changes=int(report.get("lag_changes") or 0),
                pending=int(repos["pending"]),
                faulty=int(repos["faulty"]),
                primary=primary,
            )
        if report["role"] == NodeRole.HA_PRIMARY:
            replicas = tuple(
                ReplicaLag(r["node_id"], r["url"], Level[r["level"]], r["seconds_since_seen"], int(r["lag_changes"]),
                           r.get("reachable"), str(r.get("reach") or ""))
                for r in report["replicas"]
            )
            late = [r for r in replicas if r.level is not Level.OK]
            if report.get("detail"):
                summary = str(report["detail"])
            elif late:
                summary = ", ".join(_replica_problem(r) for r in late)
            else:
                summary = f"{len(replicas)} replicas in contact"
            return cls(level=level, summary=summary, replicas=replicas)
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["level"] = self.level.name
        data["lag_seconds"] = None if self.lag_seconds is None or math.isinf(self.lag_seconds) else self.lag_seconds
        data["replicas"] = [{**r, "level": r["level"].name} for r in data["replicas"]]
        if self.primary is not None:
            data["primary"]["state"] = self.primary.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplicationFacts:
        """The inverse of :meth:`to_json` (a lag of None is +Inf: never in contact)."""
        values = dict(data)
        values["level"] = Level[values["level"]]
        lag = values.get("lag_seconds")
        values["lag_seconds"] = math.inf if lag is None and values.get("replicating") is not None else lag
        values["replicas"] = tuple(ReplicaLag(**{**r, "level": Level[r["level"]]}) for r in values["replicas"])
        primary = values.get("primary")
        values["primary"] = PrimaryFacts(**{**primary, "state": PrimaryState(primary["state"])}) if primary else None
        return cls(**values)


def _replica_problem(replica: ReplicaLag) -> str:
    if replica.reachable is False:
        return f"replica {replica.node_id}: the primary {replica.reach}"
    return f"replica {replica.node_id} last seen {_ago(replica.seconds_since_seen)}"


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


class ServerState(enum.StrEnum):
    """The node's server process, as ``bulwark status`` on its machine finds it."""

    ANSWERING = "answering"  # it answers its /status at the address it recorded
    NOT_ANSWERING = "not-answering"  # its process is there (or elsewhere), but it does not answer
    CRASHED = "crashed"  # its record is left but its process is gone: killed or crashed
    STOPPED = "stopped"  # it shut down cleanly
    NOT_STARTED = "not-started"  # no server has recorded itself in this data dir


@dataclass(frozen=True)
class ServerFacts:
    state: ServerState
    data_dir: str
    url: str | None = None
    pid: int | None = None
    hostname: str | None = None
    elsewhere: bool = False  # recorded on another machine, whose processes this one cannot see
    started_at: str | None = None
    stopped_at: str | None = None
    error: str | None = None  # why it did not answer
    http_status: int | None = None  # of its /status
    status: dict[str, Any] | None = None  # its /status body
    node: dict[str, Any] | None = None  # its /status/node document
    node_error: str | None = None  # why that could not be had

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "url": self.url, "pid": self.pid, "started_at": self.started_at,
                "stopped_at": self.stopped_at, "error": self.error or self.node_error}


@dataclass(frozen=True)
class WebhookFacts:
    """The webhook outbox as the checks judge it."""

    pending: int
    oldest_pending_seconds: float
    failing_hooks: int
    gave_up: int

    def to_json(self) -> dict[str, Any]:
        return {"pending": self.pending, "oldest_pending_seconds": self.oldest_pending_seconds,
                "failing_hooks": self.failing_hooks, "gave_up": self.gave_up}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookFacts:
        return cls(int(data["pending"]), float(data["oldest_pending_seconds"]), int(data["failing_hooks"]),
                   int(data["gave_up"]))


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
    webhooks: WebhookFacts | None = None


def facts_to_json(facts: NodeFacts) -> dict[str, Any]:
    """A standalone or HA node's facts for ``bulwark status``, which samples the machine itself."""
    return {
        "name": facts.name, "url": facts.url, "role": facts.role.value, "serving": facts.serving,
        "reason": facts.reason, "maintenance": facts.maintenance, "fenced": facts.fenced,
        "replication": facts.replication.to_json() if facts.replication is not None else None,
        "webhooks": facts.webhooks.to_json() if facts.webhooks is not None else None,
    }


def facts_from_json(data: dict[str, Any], system: SystemSample) -> NodeFacts:
    """The inverse of :func:`facts_to_json`, with this machine's ``system`` sample; ValueError if malformed."""
    if not isinstance(data, dict):
        raise ValueError("not a node's facts")
    try:
        repl = data.get("replication")
        return NodeFacts(
            name=str(data["name"]), url=str(data["url"]), role=NodeRole(data["role"]), serving=bool(data["serving"]),
            reason=str(data["reason"]), maintenance=data.get("maintenance"), fenced=data.get("fenced"),
            system=system, replication=ReplicationFacts.from_json(repl) if repl else None,
            webhooks=WebhookFacts.from_json(data["webhooks"]) if data.get("webhooks") else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a node's facts ({type(exc).__name__}: {exc})") from None


def not_serving(facts: NodeFacts, reason: str) -> NodeFacts:
    return replace(facts, serving=False, reason=reason)
