"""What `bulwark cluster status` and ``GET /manage/v1/cluster/status`` report: the same facts.

:func:`cluster_report` is pure: it judges a snapshot plus what was gathered around it (etcd
member health, the reconciler's last report, each node's ``/status``). :func:`gather` does
that gathering; :func:`render` prints the report for people, :meth:`ClusterReport.nagios`
for a monitoring system.

Levels: CRITICAL when a repository has no live up-to-date replica, etcd has no quorum, or
fewer than a majority of the nodes are alive; WARNING when a node is down or unhealthy,
an etcd member is down, a repository is under-replicated or has outdated replicas, or no
reconciler is elected; OK otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bulwark.cluster import reconciler, state
from bulwark.cluster.replica_plan import RepairFailure
from bulwark.cluster.state import BUILDING, ClusterSnapshot
from bulwark.cluster.voting import majority
from bulwark.etcd import Etcd
from bulwark.levels import Level


class RepoState(enum.Enum):
    HEALTHY = "healthy"
    OUTDATED = "outdated"  # RF live up-to-date replicas, and others waiting for repair
    UNDER_REPLICATED = "under-replicated"  # fewer live up-to-date replicas than RF
    UNAVAILABLE = "unavailable"  # no live up-to-date replica: unreadable, maybe lost


@dataclass(frozen=True)
class Probe:
    """What a node's ``/status`` answered (``http_status`` None: it did not answer)."""

    http_status: int | None
    reason: str | None = None


@dataclass(frozen=True)
class NodeReport:
    name: str
    url: str
    roles: tuple[str, ...]
    alive: bool
    maintenance: str | None
    evacuating: bool
    replicas: int
    outdated: int
    etcd_healthy: bool | None  # the etcd member on this node's host, if there is exactly one
    probe: Probe | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "roles": list(self.roles),
            "alive": self.alive,
            "maintenance": self.maintenance,
            "evacuating": self.evacuating,
            "replicas": self.replicas,
            "outdated_replicas": self.outdated,
            "etcd_healthy": self.etcd_healthy,
            "status_code": self.probe.http_status if self.probe else None,
            "status_reason": self.probe.reason if self.probe else None,
        }


@dataclass(frozen=True)
class RepoReport:
    storage_id: str
    state: RepoState
    rf: int
    replicas: dict[str, int]
    serving: tuple[str, ...]
    # The replicas whose last repair failed, as the reconciler published them.
    failures: tuple[RepairFailure, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "storage_id": self.storage_id,
            "state": self.state.value,
            "rf": self.rf,
            "replicas": dict(sorted(self.replicas.items())),
            "serving": list(self.serving),
            "repair_failures": [f.to_json() for f in self.failures],
        }


@dataclass(frozen=True)
class ClusterReport:
    name: str
    level: Level
    reasons: tuple[str, ...]
    nodes: tuple[NodeReport, ...]
    etcd: dict[str, bool]  # endpoint -> answers with a quorum (empty: not checked)
    repositories: int
    fully_replicated: int
    under_replicated: int
    outdated_replicas: int
    unavailable: int
    problems: tuple[RepoReport, ...]  # every repository that is not healthy
    reconciler: str | None
    reconciler_report: Mapping[str, Any] | None
    taken_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.name,
            "level": self.level.name,
            "exit_code": int(self.level),
            "reasons": list(self.reasons),
            "nodes": [n.to_json() for n in self.nodes],
            "etcd": dict(self.etcd),
            "repositories": {
                "total": self.repositories,
                "fully_replicated": self.fully_replicated,
                "under_replicated": self.under_replicated,
                "outdated_replicas": self.outdated_replicas,
                "unavailable": self.unavailable,
            },
            "problems": [p.to_json() for p in self.problems],
            "reconciler": self.reconciler,
            "reconciler_report": dict(self.reconciler_report) if self.reconciler_report else None,
            "taken_at": self.taken_at,
        }

    def nagios(self) -> str:
        """One line in the Nagios plugin format, performance data after the ``|``."""
        alive = sum(1 for n in self.nodes if n.alive)
        if self.reasons:
            text = "; ".join(self.reasons)
        else:
            text = f"{alive} of {len(self.nodes)} nodes alive, {self.repositories} repositories fully replicated"
        perf = (
            f"nodes_alive={alive};;;0;{len(self.nodes)} repositories={self.repositories} "
            f"under_replicated={self.under_replicated} outdated_replicas={self.outdated_replicas} "
            f"unavailable={self.unavailable}"
        )
        return f"CLUSTER {self.level.name} - {text} | {perf}"


def cluster_report(
    snapshot: ClusterSnapshot,
    *,
    etcd_health: Mapping[str, bool] | None = None,
    reconciler_report: Mapping[str, Any] | None = None,
    probes: Mapping[str, Probe] | None = None,
) -> ClusterReport:
    config = snapshot.config
    etcd = dict(etcd_health or {})
    probes = probes or {}

    failures: dict[str, list[RepairFailure]] = {}
    for failure in reconciler.published_failures(reconciler_report):
        failures.setdefault(failure.storage_id, []).append(failure)
    # One pass, and a report only for a repository with a problem: a healthy one adds to counts.
    count = dict.fromkeys(RepoState, 0)
    problems: list[RepoReport] = []
    held: dict[str, int] = {}
    outdated: dict[str, int] = {}
    for storage_id, placement in snapshot.placements.items():
        rf = config.effective_rf(placement.wanted_rf)
        serving = tuple(snapshot.serving_replicas(storage_id))
        late = set(placement.outdated())
        if not serving:
            repo_state = RepoState.UNAVAILABLE
        elif len(serving) < rf:
            repo_state = RepoState.UNDER_REPLICATED
        elif late:
            repo_state = RepoState.OUTDATED
        else:
            repo_state = RepoState.HEALTHY
        count[repo_state] += 1
        for node in placement.replicas:
            held[node] = held.get(node, 0) + 1
            outdated[node] = outdated.get(node, 0) + (node in late)
        if repo_state is not RepoState.HEALTHY:
            failed = tuple(f for f in failures.get(storage_id, []) if f.node in late)
            problems.append(RepoReport(storage_id, repo_state, rf, dict(placement.replicas), serving, failed))
    problems.sort(key=lambda r: r.storage_id)

    nodes = tuple(
        NodeReport(
            name=spec.name,
            url=spec.url,
            roles=tuple(r.value for r in spec.roles),
            alive=snapshot.is_alive(spec.name),
            maintenance=snapshot.maintenance.get(spec.name),
            evacuating=spec.name in snapshot.evacuating,
            replicas=held.get(spec.name, 0),
            outdated=outdated.get(spec.name, 0),
            etcd_healthy=_member_on_host(spec.url, etcd),
            probe=probes.get(spec.name),
        )
        for spec in config.nodes
    )

    outdated_replicas = sum(outdated.values())
    level, reasons = _judge(snapshot, nodes, etcd, count, outdated_replicas)
    failing = sum(len(r.failures) for r in problems)
    if failing:
        reasons.append(f"{failing} replicas failed their last repair (see 'bulwark cluster status -v')")
    return ClusterReport(
        name=config.name,
        level=level,
        reasons=tuple(reasons),
        nodes=nodes,
        etcd=etcd,
        repositories=len(snapshot.placements),
        fully_replicated=count[RepoState.HEALTHY],
        under_replicated=count[RepoState.UNDER_REPLICATED],
        outdated_replicas=outdated_replicas,
        unavailable=count[RepoState.UNAVAILABLE],
        problems=tuple(problems),
        reconciler=snapshot.reconciler,
        reconciler_report=reconciler_report,
        taken_at=snapshot.taken_at,
    )


def _judge(
    snapshot: ClusterSnapshot,
    nodes: Sequence[NodeReport],
    etcd: Mapping[str, bool],
    count: Mapping[RepoState, int],
    outdated_replicas: int,
) -> tuple[Level, list[str]]:
    critical: list[str] = []
    warning: list[str] = []
    if count[RepoState.UNAVAILABLE]:
        critical.append(
            f"{count[RepoState.UNAVAILABLE]} repositories have no live up-to-date replica "
            "(see 'bulwark cluster dataloss')"
        )
    if etcd:
        healthy = sum(etcd.values())
        down = [e for e, ok in etcd.items() if not ok]
        if healthy < majority(len(etcd)):
            critical.append(f"etcd has no quorum: {healthy} of {len(etcd)} members answer")
        elif down:
            warning.append(f"etcd members not answering: {', '.join(sorted(down))}")
    alive = [n for n in nodes if n.alive]
    dead = [n.name for n in nodes if not n.alive]
    if len(alive) < majority(len(nodes)):
        critical.append(f"only {len(alive)} of {len(nodes)} nodes are alive (down: {state.names(dead)})")
    elif dead:
        warning.append(f"nodes down: {state.names(dead)}")
    for node in alive:
        if node.probe is None:
            continue
        if node.probe.http_status is None:
            warning.append(f"node {node.name} holds its etcd lease but its /status does not answer")
        elif node.probe.http_status != 200 and node.maintenance is None:
            why = f": {node.probe.reason}" if node.probe.reason else ""
            warning.append(f"node {node.name} answers {node.probe.http_status} on /status{why}")
    if count[RepoState.UNDER_REPLICATED]:
        warning.append(f"{count[RepoState.UNDER_REPLICATED]} repositories are under-replicated")
    if outdated_replicas:
        warning.append(f"{outdated_replicas} replicas are outdated or being built")
    if snapshot.reconciler is None and snapshot.placements:
        warning.append("no reconciler is elected: nothing repairs the cluster")
    if critical:
        return Level.CRITICAL, critical + warning
    if warning:
        return Level.WARNING, warning
    return Level.OK, []


def _member_on_host(node_url: str, etcd: Mapping[str, bool]) -> bool | None:
    host = urlsplit(node_url).hostname
    same = [ok for endpoint, ok in etcd.items() if urlsplit(endpoint).hostname == host]
    return same[0] if len(same) == 1 else None


# -- gathering (the only I/O here) -------------------------------------------------------------


def probe(url: str, timeout: float = 1.5) -> Probe:
    try:
        response = httpx.get(f"{url}/status", timeout=timeout)
    except httpx.HTTPError:
        return Probe(None)
    try:
        body = response.json()
        reason = body.get("reason") if isinstance(body, dict) else None
    except ValueError:
        reason = None
    return Probe(response.status_code, str(reason) if reason else None)


def gather(etcd: Etcd, *, probe_nodes: bool = True, timeout: float = 1.5) -> ClusterReport:
    """Read the snapshot, ask every etcd member and every live node, and judge."""
    snapshot = state.snapshot(etcd)
    endpoints = list(snapshot.config.etcd)
    live = [n for n in snapshot.config.nodes if snapshot.is_alive(n.name)] if probe_nodes else []
    with ThreadPoolExecutor(max_workers=8) as pool:
        health = dict(zip(endpoints, pool.map(etcd.endpoint_healthy, endpoints), strict=True))
        answers = dict(zip([n.name for n in live], pool.map(lambda n: probe(n.url, timeout), live), strict=True))
    return cluster_report(
        snapshot, etcd_health=health, reconciler_report=reconciler.read_report(etcd), probes=answers
    )


# -- for people ----------------------------------------------------------------------------------

_STYLE = {Level.OK: "green", Level.WARNING: "yellow", Level.CRITICAL: "red", Level.UNKNOWN: "magenta"}


def _flag(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return "-" if value is None else (yes if value else no)


def render(report: ClusterReport, console: Console, *, verbose: bool = False) -> None:
    style = _STYLE[report.level]
    console.print(Text(f"{report.level.name}: cluster {report.name}", style=f"bold {style}"))
    for reason in report.reasons:
        console.print(Text(f"  - {reason}"))

    table = Table("node", "url", "roles", "alive", "/status", "maintenance", "evacuating", "replicas",
                  "outdated", "etcd", highlight=False)
    for node in report.nodes:
        status = "-" if node.probe is None else str(node.probe.http_status or "no answer")
        table.add_row(
            Text(node.name), Text(node.url), Text(",".join(node.roles)),
            Text(_flag(node.alive), style="" if node.alive else "red"), Text(status),
            Text(node.maintenance if node.maintenance is not None else "-"), Text(_flag(node.evacuating)),
            str(node.replicas), str(node.outdated), Text(_flag(node.etcd_healthy, "ok", "down")),
        )
    console.print(table)
    console.print(
        Text(
            f"repositories: {report.repositories} total, {report.fully_replicated} fully replicated, "
            f"{report.under_replicated} under-replicated, {report.unavailable} without a live up-to-date "
            f"replica; {report.outdated_replicas} outdated replicas"
        )
    )
    if report.etcd:
        members = ", ".join(f"{e} {'ok' if ok else 'down'}" for e, ok in report.etcd.items())
        console.print(Text(f"etcd: {members}"))
    rec = report.reconciler_report
    line = f"reconciler: {report.reconciler or 'none elected'}"
    if rec and rec.get("sentence"):
        age = max(0.0, report.taken_at - float(rec.get("at", report.taken_at)))
        line += f"; last cycle ({rec.get('leader', '?')}, {age:.0f}s ago): {rec['sentence']}"
    console.print(Text(line))

    if verbose and report.problems:
        problems = Table("repository", "state", "rf", "replicas (generation)", "serving", "last repair error",
                         highlight=False)
        for repo in report.problems:
            replicas = " ".join(
                f"{n}:{'building' if g == BUILDING else g}" for n, g in sorted(repo.replicas.items())
            )
            problems.add_row(
                Text(repo.storage_id), Text(repo.state.value), str(repo.rf), Text(replicas),
                Text(", ".join(repo.serving) or "-"),
                Text("\n".join(f"{f.node} (attempt {f.attempts}): {f.error}" for f in repo.failures) or "-"),
            )
        console.print(problems)
