"""Judging a node's facts against thresholds: pure functions, one per check.

The same judgement feeds ``bulwark status`` (and its Nagios exit code), the ``bulwark_check_level``
metric and the alerts of the status page, so the three never disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from bulwark.config import Settings
from bulwark.errors import InvalidInput
from bulwark.levels import Level
from bulwark.monitoring.facts import (
    ClusterFacts,
    NodeFacts,
    ReplicationFacts,
    ServerFacts,
    ServerState,
    WebhookFacts,
)
from bulwark.monitoring.system import SystemSample
from bulwark.roles import NodeRole

# Worst first when several checks disagree; UNKNOWN (no data) hides no real problem.
_SEVERITY = {Level.OK: 0, Level.UNKNOWN: 1, Level.WARNING: 2, Level.CRITICAL: 3}


class CheckName(enum.StrEnum):
    SERVER = "server"  # judged by `bulwark status` only: a running server needs no one to tell it it runs
    DISK = "disk"
    MEMORY = "memory"
    LOAD = "load"
    ROLE = "role"
    REPLICATION = "replication"
    CLUSTER = "cluster"
    WEBHOOKS = "webhooks"


@dataclass(frozen=True)
class Thresholds:
    """Where a node's own resources turn WARNING and CRITICAL (at or above the value)."""

    disk_warning: float = 70.0  # percent of the data dir's filesystem in use
    disk_critical: float = 85.0
    memory_warning: float = 50.0  # percent of the machine's memory in use
    memory_critical: float = 70.0
    load_warning: float = 1.0  # 15-minute load average per CPU core
    load_critical: float = 2.0

    def __post_init__(self) -> None:
        for name in ("disk", "memory", "load"):
            warning, critical = getattr(self, f"{name}_warning"), getattr(self, f"{name}_critical")
            if warning > critical:
                raise InvalidInput(f"the {name} warning threshold ({warning:g}) is above the critical one "
                                   f"({critical:g})")

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(**{f.name: getattr(settings, f"alert_{f.name}") for f in fields(cls)})

    def overridden(self, **values: float | None) -> Thresholds:
        """These thresholds with the given ones replaced (None: keep)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_json(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Check:
    name: CheckName
    level: Level
    detail: str
    value: float | None = None  # the measured value, in the unit of its thresholds

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name.value, "level": self.level.name, "detail": self.detail, "value": self.value}


def level_of(value: float, warning: float, critical: float) -> Level:
    if value >= critical:
        return Level.CRITICAL
    if value >= warning:
        return Level.WARNING
    return Level.OK


def worst(levels: Iterable[Level]) -> Level:
    return max(levels, key=_SEVERITY.__getitem__, default=Level.OK)


def check_disk(system: SystemSample, limits: Thresholds) -> Check:
    ratio = system.disk_ratio
    if ratio is None or system.disk_free is None:
        return Check(CheckName.DISK, Level.UNKNOWN, "cannot read the data dir's filesystem")
    percent = ratio * 100
    detail = f"{percent:.1f}% of the data dir's filesystem used, {_gib(system.disk_free)} free"
    return Check(CheckName.DISK, level_of(percent, limits.disk_warning, limits.disk_critical), detail, percent)


def check_memory(system: SystemSample, limits: Thresholds) -> Check:
    ratio = system.memory_ratio
    if ratio is None or system.memory_total is None:
        return Check(CheckName.MEMORY, Level.UNKNOWN, "this system does not report its memory")
    percent = ratio * 100
    detail = f"{percent:.1f}% of {_gib(system.memory_total)} in use"
    return Check(CheckName.MEMORY, level_of(percent, limits.memory_warning, limits.memory_critical), detail, percent)


def check_load(system: SystemSample, limits: Thresholds) -> Check:
    per_cpu = system.load15_per_cpu
    if per_cpu is None or system.load is None:
        return Check(CheckName.LOAD, Level.UNKNOWN, "this system does not report its load average")
    detail = f"15-minute load {system.load[2]:.2f} on {system.cpus} cores ({per_cpu:.2f} per core)"
    return Check(CheckName.LOAD, level_of(per_cpu, limits.load_warning, limits.load_critical), detail, per_cpu)


def check_role(facts: NodeFacts) -> Check:
    role = facts.role.value
    if facts.fenced:
        return Check(CheckName.ROLE, Level.CRITICAL, f"{role}, fenced: {facts.fenced}")
    if facts.maintenance is not None:
        return Check(CheckName.ROLE, Level.WARNING, f"{role}, {facts.reason}")
    if facts.serving or facts.role is NodeRole.HA_REPLICA:
        # A replica takes no traffic on purpose; its replication check says how it is doing.
        return Check(CheckName.ROLE, Level.OK, f"{role}, {facts.reason}")
    return Check(CheckName.ROLE, Level.WARNING, f"{role}, not serving: {facts.reason}")


def check_server(server: ServerFacts) -> Check:
    """The node's server process, as ``bulwark status`` found it on this machine."""
    url, pid = server.url or "?", server.pid
    start = "'bulwark serve'"
    if server.state is ServerState.ANSWERING:
        if server.node is None:
            return Check(CheckName.SERVER, Level.WARNING,
                         f"answers /status at {url} (pid {pid}) but not /status/node ({server.node_error}): the "
                         "other checks are read from the data dir")
        return Check(CheckName.SERVER, Level.OK, f"answers at {url} (pid {pid}, started {server.started_at})")
    if server.state is ServerState.NOT_ANSWERING:
        where = f"process {pid} runs but"
        if server.elsewhere:
            where = f"the server started on {server.hostname} (pid {pid})"
        return Check(CheckName.SERVER, Level.CRITICAL,
                     f"{where} does not answer at {url} ({server.error}): hung, overloaded or still starting")
    if server.state is ServerState.CRASHED:
        return Check(CheckName.SERVER, Level.CRITICAL,
                     f"not running: the server (pid {pid}, started {server.started_at}) is gone without "
                     f"stopping cleanly: it was killed or crashed; see its log, then start it with {start}")
    if server.state is ServerState.STOPPED:
        return Check(CheckName.SERVER, Level.CRITICAL,
                     f"not running: the server (pid {pid}) was stopped cleanly at {server.stopped_at}; start it "
                     f"with {start}")
    return Check(CheckName.SERVER, Level.CRITICAL,
                 f"not running: no server has recorded itself in {server.data_dir}; start it with {start}")


def check_replication(replication: ReplicationFacts) -> Check:
    return Check(CheckName.REPLICATION, replication.level, replication.summary, replication.lag_seconds)


def check_cluster(cluster: ClusterFacts) -> Check:
    if not cluster.etcd_reachable:
        return Check(CheckName.CLUSTER, Level.CRITICAL, f"etcd is unreachable: {cluster.error or 'no answer'}")
    if not cluster.session:
        return Check(CheckName.CLUSTER, Level.CRITICAL,
                     f"node {cluster.node} holds no etcd session: it is not running or cannot renew its lease")
    report = cluster.report
    if report is None:
        return Check(CheckName.CLUSTER, Level.UNKNOWN, cluster.error or "the cluster state could not be read")
    if report.reasons:
        return Check(CheckName.CLUSTER, report.level, "; ".join(report.reasons))
    alive = sum(1 for n in report.nodes if n.alive)
    return Check(CheckName.CLUSTER, report.level,
                 f"{alive} of {len(report.nodes)} nodes alive, {report.repositories} repositories fully replicated")


def evaluate(facts: NodeFacts, limits: Thresholds) -> tuple[Check, ...]:
    """Every check that applies to this node, in a fixed order."""
    checks = [
        check_disk(facts.system, limits),
        check_memory(facts.system, limits),
        check_load(facts.system, limits),
        check_role(facts),
    ]
    if facts.replication is not None:
        checks.append(check_replication(facts.replication))
    if facts.cluster is not None:
        checks.append(check_cluster(facts.cluster))
    if facts.webhooks is not None and facts.role is not NodeRole.HA_REPLICA:
        checks.append(check_webhooks(facts.webhooks))
    return tuple(checks)


# A delivery pending longer than this means a receiver (or this node's deliverer) is in trouble.
WEBHOOKS_BEHIND_SECONDS = 900


def check_webhooks(hooks: WebhookFacts) -> Check:
    """WARNING while a hook's latest delivery failed or a delivery has waited 15 minutes: events
    are kept and retried for 24 h, so nothing is lost yet, but a receiver is missing them."""
    problems = []
    if hooks.failing_hooks:
        problems.append(f"{hooks.failing_hooks} hooks failing")
    if hooks.oldest_pending_seconds >= WEBHOOKS_BEHIND_SECONDS:
        problems.append(f"oldest delivery waiting {hooks.oldest_pending_seconds / 60:.0f} min")
    # Given up is told, not warned about: it stays so for the 30 days the delivery is kept.
    gave_up = f"; {hooks.gave_up} given up ('bulwark hook redeliver --gave-up')" if hooks.gave_up else ""
    if problems:
        return Check(CheckName.WEBHOOKS, Level.WARNING, f"{hooks.pending} pending; " + "; ".join(problems) + gave_up)
    return Check(CheckName.WEBHOOKS, Level.OK, f"{hooks.pending} pending, none failing{gave_up}")


def nagios_line(name: str, checks: Iterable[Check], limits: Thresholds) -> str:
    """One line in the Nagios plugin format: the problems (or every check), then performance data
    (``label=value[unit];warn;crit``)."""
    checks = list(checks)
    level = worst(c.level for c in checks)
    shown = [c for c in checks if c.level is not Level.OK] or checks
    text = "; ".join(f"{c.name.value}: {c.detail}" for c in shown)
    perf = []
    for check in checks:
        if check.value is None or check.name not in (CheckName.DISK, CheckName.MEMORY, CheckName.LOAD):
            continue
        warning = getattr(limits, f"{check.name.value}_warning")
        critical = getattr(limits, f"{check.name.value}_critical")
        unit = "" if check.name is CheckName.LOAD else "%"
        perf.append(f"{check.name.value}={check.value:.2f}{unit};{warning:g};{critical:g}")
    return f"BULWARK {level.name} - node {name}: {text}" + (f" | {' '.join(perf)}" if perf else "")


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"
