"""``/status``: what a load balancer asks before sending traffic here, and ``/status/node``: what
``bulwark status`` asks the running server."""

from __future__ import annotations

import hmac
import os
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bulwark.ha import state as ha_state
from bulwark.http import replication
from bulwark.http.auth import site_admin
from bulwark.monitoring import overview as ov
from bulwark.monitoring import running
from bulwark.monitoring.checks import evaluate
from bulwark.monitoring.facts import facts_to_json
from bulwark.monitoring.gather import NodeMonitor
from bulwark.node import Node


async def status(request: Request) -> JSONResponse:
    """200 when this node takes traffic, 503 otherwise. Role, epoch and node id are public on purpose:
    a former primary reads them from its peers to learn that it was superseded, and a primary checks
    that the replica registering with it answers at the URL it gave."""
    node: Node = request.app.state.node
    # /status/fallback: the check of the balancer's last-resort backend (see Node.healthy).
    ok, reason = await run_in_threadpool(lambda: node.healthy(strict=request.url.path != "/status/fallback"))
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "role": node.role.value}
    if node.cluster is not None:
        body.update(epoch=0, fenced=node.cluster.fenced_reason() is not None)
    else:
        ha = await run_in_threadpool(node.ha)
        body.update(epoch=ha.epoch, fenced=bool(ha.fenced), node_id=await run_in_threadpool(ha_state.node_id,
                                                                                         node.store))
    body["reason"] = reason
    return JSONResponse(body, status_code=200 if ok else 503)


async def own_node(request: Request) -> JSONResponse:
    """This node's own overview (the status page's ``scope=node``) and the facts behind it, for
    ``bulwark status`` on the same machine (with the secret of this server's record in the data dir)
    or a site administrator."""
    node: Node = request.app.state.node
    if not await run_in_threadpool(_from_this_machine, request, node):
        await site_admin(request, "a node's facts")
    monitor: NodeMonitor = request.app.state.monitor
    facts = await run_in_threadpool(monitor.facts)
    checks = evaluate(facts, monitor.thresholds)
    entry = {**ov.node_entry(facts, checks), "self": True}
    doc = ov.document(ov.mode_of(facts.role), facts.name, [entry], ov.cluster_summary(facts.cluster),
                      monitor.thresholds.to_json())
    doc["facts"] = facts_to_json(facts) if facts.cluster is None else None
    doc["pid"] = os.getpid()
    return JSONResponse(doc, headers={"Cache-Control": "no-store"})


def _from_this_machine(request: Request, node: Node) -> bool:
    """Whether the caller holds the secret this very process recorded in its data dir."""
    given = request.headers.get(running.MONITOR_HEADER)
    if not given:
        return False
    record = running.read(node.settings.data_dir)
    if record is None or record.pid != os.getpid() or not record.secret:
        return False
    return hmac.compare_digest(given.encode(), record.secret.encode())


routes = [
    Route("/status", status, methods=["GET", "HEAD"]),
    Route("/status/fallback", status, methods=["GET", "HEAD"]),
    Route("/status/node", own_node, methods=["GET"]),
    Route("/status/replication", replication.replica_health, methods=["GET", "HEAD"]),
]
