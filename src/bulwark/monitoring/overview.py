"""What the status page shows: this node and, in HA or cluster mode, every node.

Each node judges itself (``scope=node``); the node that is asked for the whole picture
(``scope=all``) adds what only it can see — the cluster state from etcd, or the replicas' lag on an
HA primary — and asks its peers for their own judgement with the caller's credential. A peer
that does not answer is shown down; in a cluster, a node is down when it holds no etcd lease.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from bulwark.levels import Level
from bulwark.monitoring.checks import Check, CheckName, evaluate, worst
from bulwark.monitoring.facts import ClusterFacts, NodeFacts, ReplicationFacts
from bulwark.monitoring.gather import NodeMonitor
from bulwark.roles import NodeRole

OVERVIEW_PATH = "/manage/v1/monitoring/overview"
PEER_TIMEOUT = 2.0
_ALERTING = (Level.WARNING, Level.CRITICAL)

# A peer's own entry (a dict), or why it could not be had (a str).
PeerAnswer = dict[str, Any] | str
FetchPeer = Callable[[str, "Scope"], Awaitable[PeerAnswer]]


class Scope(enum.StrEnum):
    NODE = "node"  # this node only, as it judges itself
    ALL = "all"  # every node this node knows of


class Mode(enum.StrEnum):
    STANDALONE = "standalone"
    HA = "ha"
    CLUSTER = "cluster"


def mode_of(role: NodeRole) -> Mode:
    if role is NodeRole.CLUSTER_MEMBER:
        return Mode.CLUSTER
    if role in (NodeRole.HA_PRIMARY, NodeRole.HA_REPLICA):
        return Mode.HA
    return Mode.STANDALONE


# -- pure assembly -------------------------------------------------------------------------------


def node_entry(facts: NodeFacts, checks: Sequence[Check]) -> dict[str, Any]:
    """One node as it judges itself."""
    repl = facts.replication
    repairs: int | None = None
    if repl is not None and facts.role is NodeRole.HA_REPLICA:
        repairs = (repl.pending or 0) + (repl.faulty or 0)
    cluster = facts.cluster
    if cluster is not None and cluster.report is not None:
        repairs = next((n.outdated for n in cluster.report.nodes if n.name == facts.name), None)
    own = list(checks)
    if cluster is not None and cluster.session and cluster.etcd_reachable:
        # The cluster check then judges the whole cluster, shown once beside the nodes, not this node.
        own = [c for c in checks if c.name is not CheckName.CLUSTER]
    return {
        "name": facts.name,
        "url": facts.url,
        "role": facts.role.value,
        "up": True,
        "serving": facts.serving,
        "reason": facts.reason,
        "maintenance": facts.maintenance,
        "fenced": facts.fenced,
        "level": worst(c.level for c in own).name,
        "lag_seconds": _finite(repl.lag_seconds) if repl is not None else None,
        "lag_changes": repl.lag_changes if repl is not None else None,
        "repairs": repairs,
        "checks": [c.to_json() for c in checks],
        "alerts": [c.to_json() for c in own if c.level in _ALERTING],
        "error": None,
    }


def down_entry(name: str, url: str, role: NodeRole | str, detail: str) -> dict[str, Any]:
    """A node that is down, or that could not be asked."""
    alert = {"check": "node", "level": Level.CRITICAL.name, "detail": detail, "value": None}
    return {
        "name": name, "url": url, "role": str(role), "up": False, "serving": False, "reason": detail,
        "maintenance": None, "fenced": None, "level": Level.CRITICAL.name, "lag_seconds": None,
        "lag_changes": None, "repairs": None, "checks": [], "alerts": [alert], "error": detail,
    }


def cluster_nodes(local: dict[str, Any], cluster: ClusterFacts,
                  peers: Mapping[str, PeerAnswer]) -> list[dict[str, Any]]:
    """Every node of the cluster: alive ones as they judge themselves, the others down."""
    report = cluster.report
    if report is None:
        return [local]
    nodes = []
    for node in report.nodes:
        if node.name == local["name"]:
            entry = dict(local)
        elif not node.alive:
            entry = down_entry(node.name, node.url, NodeRole.CLUSTER_MEMBER,
                               "down: holds no etcd lease (not running, or cut off)")
        else:
            answer = peers.get(node.name, "not asked")
            if isinstance(answer, str):
                # It holds its lease, so it is alive; only this node cannot ask it (as cluster status judges it).
                entry = _unreachable(node.name, node.url, NodeRole.CLUSTER_MEMBER, answer)
                entry["up"], entry["level"] = True, Level.WARNING.name
                entry["alerts"] = [{**a, "level": Level.WARNING.name} for a in entry["alerts"]]
            else:
                entry = dict(answer)
        entry["repairs"] = node.outdated
        entry["replicas"] = node.replicas
        if node.maintenance is not None:
            entry["maintenance"] = node.maintenance
        nodes.append(entry)
    return nodes


def primary_nodes(local: dict[str, Any], replication: ReplicationFacts,
                  peers: Mapping[str, PeerAnswer]) -> list[dict[str, Any]]:
    """An HA primary and its replicas, with the lag the primary sees."""
    nodes = [local]
    for replica in replication.replicas:
        answer = peers.get(replica.node_id, "not asked")
        if isinstance(answer, str):
            entry = _unreachable(replica.node_id, replica.url, NodeRole.HA_REPLICA, answer)
        else:
            entry = dict(answer)
            entry["name"] = replica.node_id
        if entry.get("lag_changes") is None:
            entry["lag_changes"] = replica.lag_changes
        entry["last_seen_seconds"] = replica.seconds_since_seen
        entry["reachable"] = replica.reachable
        if replica.level in _ALERTING:
            since = replica.seconds_since_seen
            seen = "never" if since is None else f"{since:.0f}s ago"
            detail = f"the primary last heard from it {seen}"
            if replica.reachable is False:
                detail = f"the primary {replica.reach}; it last heard from it {seen}"
            entry["alerts"] = [*entry["alerts"], {"check": CheckName.REPLICATION.value, "level": replica.level.name,
                                                  "detail": detail, "value": since}]
            entry["level"] = _worse(entry["level"], replica.level)
        nodes.append(entry)
    return nodes


def replica_nodes(local: dict[str, Any], primary_url: str | None, answer: PeerAnswer) -> list[dict[str, Any]]:
    """From an HA replica: the primary's picture with this node's fresh entry, or the primary down."""
    if isinstance(answer, str):
        return [local, _unreachable("primary", primary_url or "?", NodeRole.HA_PRIMARY, answer)]
    others = [{**n, "self": False} for n in answer.get("nodes", []) if n.get("name") != local["name"]]
    return [*others, local] if others else [local]


def cluster_summary(cluster: ClusterFacts | None) -> dict[str, Any] | None:
    if cluster is None:
        return None
    report = cluster.report
    if report is None:
        return {"name": None, "level": Level.CRITICAL.name, "reasons": [f"etcd is unreachable: {cluster.error}"],
                "repositories": None, "etcd": {}, "reconciler": None}
    return {
        "name": report.name,
        "level": report.level.name,
        "reasons": list(report.reasons),
        "repositories": {
            "total": report.repositories,
            "fully_replicated": report.fully_replicated,
            "under_replicated": report.under_replicated,
            "outdated_replicas": report.outdated_replicas,
            "unavailable": report.unavailable,
        },
        "etcd": dict(report.etcd),
        "reconciler": report.reconciler,
    }


def alerts_of(nodes: Sequence[dict[str, Any]], cluster: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every active alert, once: each node's own, and the cluster's (which every member would repeat)."""
    alerts = [{"node": n["name"], **a} for n in nodes for a in n.get("alerts", [])]
    if cluster is not None and cluster["level"] in (Level.WARNING.name, Level.CRITICAL.name):
        alerts += [{"node": "cluster", "check": CheckName.CLUSTER.value, "level": cluster["level"], "detail": reason,
                    "value": None} for reason in cluster["reasons"]]
    order = {Level.CRITICAL.name: 0, Level.WARNING.name: 1}
    return sorted(alerts, key=lambda a: order.get(a["level"], 2))


def document(mode: Mode, me: str, nodes: list[dict[str, Any]], cluster: dict[str, Any] | None,
             thresholds: Mapping[str, float]) -> dict[str, Any]:
    alerts = alerts_of(nodes, cluster)
    levels = [Level[n["level"]] for n in nodes] + ([Level[cluster["level"]]] if cluster else [])
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode.value,
        "node": me,
        "level": worst(levels).name,
        "nodes": nodes,
        "alerts": alerts,
        "cluster": cluster,
        "thresholds": dict(thresholds),
    }


def _unreachable(name: str, url: str, role: NodeRole, why: str) -> dict[str, Any]:
    return down_entry(name, url, role, f"does not answer: {why}")


def _worse(level: str, other: Level) -> str:
    return worst([Level[level], other]).name


def _finite(value: float | None) -> float | None:
    return None if value is None or value == float("inf") else round(value, 3)


# -- gathering (I/O) -----------------------------------------------------------------------------


def http_fetcher(client: httpx.AsyncClient, credential: Mapping[str, str]) -> FetchPeer:
    """Ask a peer for its overview with the caller's credential headers (valid on every node of a
    deployment: a token, or a status-page session)."""

    async def fetch(url: str, scope: Scope) -> PeerAnswer:
        headers = dict(credential)
        try:
            response = await client.get(f"{url.rstrip('/')}{OVERVIEW_PATH}", params={"scope": scope.value},
                                        headers=headers)
        except httpx.HTTPError as exc:
            return exc.__class__.__name__
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        try:
            body = response.json()
        except ValueError:
            return "not JSON"
        if not isinstance(body, dict):
            return "not an overview"
        if scope is Scope.NODE:
            nodes = body.get("nodes") or []
            return {**nodes[0], "self": False} if nodes and isinstance(nodes[0], dict) else "not an overview"
        return body

    return fetch


async def build(monitor: NodeMonitor, scope: Scope, fetch: FetchPeer) -> dict[str, Any]:
    facts = await run_in_threadpool(monitor.facts)
    checks = evaluate(facts, monitor.thresholds)
    local = {**node_entry(facts, checks), "self": True}
    mode = mode_of(facts.role)
    cluster = cluster_summary(facts.cluster)
    thresholds = monitor.thresholds.to_json()
    if scope is Scope.NODE or mode is Mode.STANDALONE:
        return document(mode, facts.name, [local], cluster, thresholds)
    if facts.cluster is not None and facts.cluster.report is not None:
        peers = [n for n in facts.cluster.report.nodes if n.alive and n.name != facts.name]
        answers = await asyncio.gather(*(fetch(n.url, Scope.NODE) for n in peers))
        nodes = cluster_nodes(local, facts.cluster, dict(zip([n.name for n in peers], answers, strict=True)))
        return document(mode, facts.name, nodes, cluster, thresholds)
    repl = facts.replication
    if repl is not None and facts.role is NodeRole.HA_PRIMARY:
        answers = await asyncio.gather(*(fetch(r.url, Scope.NODE) for r in repl.replicas))
        nodes = primary_nodes(local, repl, dict(zip([r.node_id for r in repl.replicas], answers, strict=True)))
        return document(mode, facts.name, nodes, cluster, thresholds)
    if repl is not None and repl.primary_url:
        nodes = replica_nodes(local, repl.primary_url, await fetch(repl.primary_url, Scope.ALL))
        return document(mode, facts.name, nodes, cluster, thresholds)
    return document(mode, facts.name, [local], cluster, thresholds)
