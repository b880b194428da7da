"""``/manage/v1/replication``: the node-to-node endpoints of HA, and its status.

Replicas authenticate with the credential the primary issued at registration
(``Authorization: Bearer``), name themselves (``X-Bulwark-Node``) and state their
epoch (``X-Bulwark-Epoch``). These endpoints keep working in maintenance mode,
so replication goes on while the primary is being serviced. The site
administrators' GETs (reports, the replica list) answer on every node, replicas
and fenced primaries included: reading changes nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bulwark.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    PeerUnreachable,
    StaleEpoch,
    Unauthenticated,
    Unavailable,
)
from bulwark.ha import state as ha_state
from bulwark.ha.client import EPOCH_HEADER, NODE_HEADER, peer_status
from bulwark.ha.health import Thresholds
from bulwark.ha.report import replication_report
from bulwark.ha.setup import FENCED_PREFIX
from bulwark.ha.state import ReplicaRecord
from bulwark.http.api.common import call, context, field, json_body
from bulwark.http.auth import site_admin
from bulwark.models import MaintenanceState
from bulwark.node import Node, Traffic
from bulwark.security import hash_token

CREDENTIAL_PREFIX = "bwr_"
MAX_WAIT = 30.0
MAX_LIMIT = 5000
# Seconds a primary gives a registering replica to answer at the URL it advertises.
CALL_BACK_TIMEOUT = 5.0
# Replica records are read-modify-written as one setting; one writer at a time.
_replicas_lock = threading.Lock()


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


async def _site_admin(request: Request) -> Node:
    ctx = await context(request, Traffic.ADMIN)
    ctx.require_site_admin()
    return ctx.node


async def site_admin_reading(request: Request, what: str) -> Node:
    """A site administrator reading state, on any node in any state (no serving check)."""
    await site_admin(request, what)
    return _node(request)


def authenticated_replica(request: Request) -> ReplicaRecord:
    """The calling replica, authenticated by its credential and checked for epoch."""
    node = _node(request)
    record = _replica_by_credential(request)
    claimed = request.headers.get(NODE_HEADER)
    if claimed is not None and claimed != record.node_id:
        raise Forbidden(f"this credential belongs to node {record.node_id}, not {claimed}")
    ha = ha_state.load(node.store)
    raw_epoch = request.headers.get(EPOCH_HEADER)
    if raw_epoch is not None:
        try:
            epoch = int(raw_epoch)
        except ValueError:
            raise InvalidInput(f"{EPOCH_HEADER} must be an integer") from None
        if epoch > ha.epoch:
            # The caller knows a newer epoch: someone was promoted over us. Stop taking writes.
            reason = f"node {record.node_id} reports epoch {epoch}, above this node's {ha.epoch}"
            ha_state.save(node.store, ha.with_(fenced=reason))
            raise StaleEpoch(f"this node was superseded ({reason}); it no longer serves replication")
        if epoch < ha.epoch:
            raise StaleEpoch(f"wrong epoch {epoch}: this primary is at epoch {ha.epoch}; set the replica up again")
    if ha.role != "ha-primary" or ha.fenced:
        raise Unavailable(f"this node is not a serving primary ({ha.fenced or ha.role})")
    return record


def _touch(node: Node, record: ReplicaRecord, position: int | None) -> None:
    with _replicas_lock:
        replicas = ha_state.load_replicas(node.store)
        now = node.clock.now().isoformat()
        updated = [
            replace(r, last_seen=now, position=position if position is not None else r.position)
            if r.node_id == record.node_id
            else r
            for r in replicas
        ]
        ha_state.save_replicas(node.store, updated)


# -- registration (site admin) ----------------------------------------------------------


async def register_replica(request: Request) -> JSONResponse:
    node = await _site_admin(request)
    body = await json_body(request)
    node_id = field(body, "node_id", str, required=True)
    url = field(body, "url", str, required=True)
    assert node_id is not None and url is not None
    if not node_id.isalnum() or len(node_id) > 64:
        raise InvalidInput("node_id must be 1-64 letters or digits", field="node_id")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput("url must be an http(s) URL", field="url")

    def do() -> dict[str, Any]:
        ha = ha_state.load(node.store)
        if ha.role == "ha-replica":
            raise InvalidInput(f"this node is a replica of {ha.primary_url}; register with the primary")
        if ha.fenced:
            raise Unavailable(f"this node is fenced ({ha.fenced}); register with the current primary")
        if node_id == ha_state.node_id(node.store):
            raise InvalidInput("a node cannot replicate from itself")
        call_back(url, node_id)
        if ha.role != "ha-primary":
            ha = ha.with_(role="ha-primary", epoch=max(1, ha.epoch))
            ha_state.save(node.store, ha)
        credential = CREDENTIAL_PREFIX + secrets.token_hex(20)
        record = ReplicaRecord(
            node_id=node_id,
            url=url.rstrip("/"),
            credential_hash=hash_token(credential),
            created_at=node.clock.now().isoformat(),
        )
        with _replicas_lock:
            others = [r for r in ha_state.load_replicas(node.store) if r.node_id != node_id]
            ha_state.save_replicas(node.store, [*others, record])
        return {"credential": credential, "primary_id": ha_state.node_id(node.store), "epoch": ha.epoch}

    return JSONResponse(await call(do), status_code=201)


def call_back(url: str, node_id: str) -> None:
    """Refuse a replica this primary cannot reach at ``url``: its epoch check could never see it
    promoted, and the status page could never ask it."""
    try:
        answer = peer_status(url, CALL_BACK_TIMEOUT)
    except PeerUnreachable as exc:
        raise InvalidInput(
            f"this primary cannot reach the replica at its advertised URL {url} ({exc.message}); start the "
            "replica with 'bulwark serve', or pass the URL this primary reaches it by with --advertise-url",
            field="url",
        ) from None
    other = answer.get("node_id")
    if isinstance(other, str) and other != node_id:
        raise InvalidInput(
            f"the advertised URL {url} is node {other}'s, not the replica's ({node_id}); pass the replica's own "
            "URL with --advertise-url",
            field="url",
        )


async def list_replicas(request: Request) -> JSONResponse:
    node = await site_admin_reading(request, "replica lists")
    replicas = await call(ha_state.load_replicas, node.store)
    return JSONResponse(
        [{k: v for k, v in r.__dict__.items() if k != "credential_hash"} for r in replicas]
    )


async def remove_replica(request: Request) -> Response:
    """Site admins may remove any replica; a replica may remove itself (its own teardown)."""
    node_id = request.path_params["node_id"]
    if request.headers.get("authorization", "").lower().startswith("bearer bwr_"):
        node = _node(request)
        record = await call(_replica_by_credential, request)
        if record.node_id != node_id:
            raise Forbidden("a replica may only remove itself")
    else:
        node = await _site_admin(request)

    def do() -> None:
        with _replicas_lock:
            replicas = ha_state.load_replicas(node.store)
            kept = [r for r in replicas if r.node_id != node_id]
            if len(kept) == len(replicas):
                raise NotFound(f"no replica {node_id!r}")
            ha_state.save_replicas(node.store, kept)

    await call(do)
    return Response(status_code=204)


# -- the stream (replicas) -----------------------------------------------------------


async def snapshot(request: Request) -> JSONResponse:
    node = _node(request)
    record = await call(authenticated_replica, request)
    snap = await call(node.changelog.snapshot)
    await call(_touch, node, record, snap.seq)
    epoch = ha_state.load(node.store).epoch
    return JSONResponse({"seq": snap.seq, "epoch": epoch, "tables": snap.tables, "sequences": snap.sequences})


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return value


async def changes(request: Request) -> JSONResponse:
    """Changes after ``after``; waits up to ``wait`` seconds for one when there are none."""
    node = _node(request)
    record = await call(authenticated_replica, request)
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", 500, 1, MAX_LIMIT)
    try:
        wait = min(MAX_WAIT, max(0.0, float(request.query_params.get("wait", "0"))))
    except ValueError:
        raise InvalidInput("wait must be a number of seconds") from None
    log = node.changelog
    last = await call(log.last_seq)
    if after > last:
        raise InvalidInput(f"position {after} is ahead of this primary ({last}); set the replica up again")
    oldest = await call(log.oldest_seq)
    if oldest and after < oldest - 1:
        raise InvalidInput(
            f"position {after} is older than the oldest change kept ({oldest}); set the replica up again"
        )
    await call(_touch, node, record, after)
    deadline = asyncio.get_running_loop().time() + wait
    batch = await call(log.changes_since, after, limit=limit)
    while not batch and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        batch = await call(log.changes_since, after, limit=limit)
    last = await call(log.last_seq)
    return JSONResponse({"last_seq": last, "changes": [c.to_json() for c in batch]})


async def checksums(request: Request) -> JSONResponse:
    node = _node(request)
    await call(authenticated_replica, request)

    def compute() -> dict[str, str]:
        result = {}
        for repo in node.store.list_repos():
            if node.git.exists(repo.storage_id):
                result[repo.storage_id] = node.git.ref_checksum(repo.storage_id)
        return result

    return JSONResponse({"checksums": await call(compute)})


async def fence(request: Request) -> JSONResponse:
    """A replica being promoted tells this primary to stop taking writes."""
    node = _node(request)
    # Authenticate before reading the body (without the epoch check: a higher epoch is exactly
    # what fencing announces), so an anonymous caller gets no parser to work on.
    record = await call(_replica_by_credential, request)
    body = await json_body(request)
    new_epoch = field(body, "epoch", int, required=True)
    by = field(body, "by", str, default="")
    assert new_epoch is not None

    def do() -> dict[str, Any]:
        ha = ha_state.load(node.store)
        if new_epoch <= ha.epoch:
            raise StaleEpoch(f"epoch {new_epoch} is not above this node's {ha.epoch}")
        reason = f"node {by or record.node_id} was promoted to primary at epoch {new_epoch}"
        ha_state.save(node.store, ha.with_(fenced=reason))
        node.store.set_maintenance(
            MaintenanceState(enabled=True, message=f"{FENCED_PREFIX} {reason}", since=node.clock.now())
        )
        return {"fenced": True, "reason": reason}

    return JSONResponse(await call(do))


def _replica_by_credential(request: Request) -> ReplicaRecord:
    """The replica whose credential the request carries (no epoch or role checks)."""
    node = _node(request)
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.startswith(CREDENTIAL_PREFIX):
        raise Unauthenticated("replication endpoints need a replica's credential (Authorization: Bearer bwr_...)")
    digest = hash_token(secret.strip())
    record = next((r for r in ha_state.load_replicas(node.store) if r.credential_hash == digest), None)
    if record is None:
        raise Unauthenticated("unknown or revoked replication credential")
    return record


def _limits(node: Node) -> Thresholds:
    return Thresholds(primary_timeout=node.settings.ha_primary_timeout)


async def status(request: Request) -> JSONResponse:
    node = await site_admin_reading(request, "replication reports")
    report = await call(replication_report, node.store, node.changelog, now=node.clock.now(), limits=_limits(node))
    return JSONResponse(report)


async def replica_health(request: Request) -> JSONResponse:
    """For monitors: 200 while this replica is healthy (OK or WARNING), 503 otherwise."""
    node = _node(request)
    report = await call(replication_report, node.store, node.changelog, now=node.clock.now(), limits=_limits(node))
    healthy = report["role"] == "ha-replica" and report["exit_code"] < 2
    body = {k: report.get(k) for k in ("role", "level", "lag_seconds", "lag_changes", "repositories")}
    return JSONResponse(body, status_code=200 if healthy else 503)


async def cluster_status(request: Request) -> JSONResponse:
    """What ``bulwark cluster status --json`` prints, from whichever node is asked."""
    from bulwark.cluster.report import gather

    node = await site_admin_reading(request, "cluster reports")
    if node.cluster is None:
        raise NotFound("this node is not a cluster member")
    report = await call(gather, node.cluster.etcd)
    return JSONResponse(report.to_json())


routes: list[BaseRoute] = [
    Route("/cluster/status", cluster_status, methods=["GET"]),
    Route("/replication/replicas", register_replica, methods=["POST"]),
    Route("/replication/replicas", list_replicas, methods=["GET"]),
    Route("/replication/replicas/{node_id}", remove_replica, methods=["DELETE"]),
    Route("/replication/snapshot", snapshot, methods=["GET"]),
    Route("/replication/changes", changes, methods=["GET"]),
    Route("/replication/checksums", checksums, methods=["GET"]),
    Route("/replication/fence", fence, methods=["POST"]),
    Route("/replication/status", status, methods=["GET"]),
]
