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

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bulwark.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
)
from bulwark.ha import primary
from bulwark.ha import state as ha_state
from bulwark.ha.client import EPOCH_HEADER, NODE_HEADER
from bulwark.ha.health import Thresholds
from bulwark.ha.report import replication_report
from bulwark.ha.state import ReplicaRecord
from bulwark.http.api.common import call, context, field, json_body
from bulwark.http.auth import site_admin
from bulwark.node import Node, Traffic
from bulwark.roles import NodeRole

MAX_WAIT = 30.0
MAX_LIMIT = 5000


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
    return primary.authenticated_replica(_node(request).store, request.headers.get("authorization", ""),
                                         claimed=request.headers.get(NODE_HEADER),
                                         raw_epoch=request.headers.get(EPOCH_HEADER))


def _touch(node: Node, record: ReplicaRecord, position: int | None) -> None:
    primary.touch(node.store, node.clock, record, position)


# -- registration (site admin) ----------------------------------------------------------


async def register_replica(request: Request) -> JSONResponse:
    node = await _site_admin(request)
    body = await json_body(request)
    node_id = field(body, "node_id", str, required=True)
    url = field(body, "url", str, required=True)
    assert node_id is not None and url is not None
    return JSONResponse(await call(primary.register, node.store, node.clock, node_id, url), status_code=201)


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
    await call(primary.remove, node.store, node_id)
    return Response(status_code=204)


# -- the stream (replicas) -----------------------------------------------------------


async def snapshot(request: Request) -> JSONResponse:
    node = _node(request)
    record = await call(authenticated_replica, request)
    snap = await call(node.replication_log().snapshot)
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
    log = node.replication_log()
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
    return JSONResponse(await call(primary.fence, node.store, node.clock, record, new_epoch, by or ""))


def _replica_by_credential(request: Request) -> ReplicaRecord:
    """The replica whose credential the request carries (no epoch or role checks)."""
    return primary.replica_by_credential(_node(request).store, request.headers.get("authorization", ""))


def _limits(node: Node) -> Thresholds:
    return Thresholds(primary_timeout=node.settings.ha_primary_timeout)


async def status(request: Request) -> JSONResponse:
    node = await site_admin_reading(request, "replication reports")
    report = await call(replication_report, node.store, node.replication_log(), now=node.clock.now(),
                        limits=_limits(node))
    return JSONResponse(report)


async def replica_health(request: Request) -> JSONResponse:
    """For monitors: 200 while this replica is healthy (OK or WARNING), 503 otherwise."""
    node = _node(request)
    report = await call(replication_report, node.store, node.replication_log(), now=node.clock.now(),
                        limits=_limits(node))
    healthy = report["role"] == NodeRole.HA_REPLICA and report["exit_code"] < 2
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
