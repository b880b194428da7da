"""``/status``: what a load balancer asks before sending traffic here."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bulwark.http import manage
from bulwark.node import Node


async def status(request: Request) -> JSONResponse:
    """200 when this node takes traffic, 503 otherwise. Role and epoch are public on purpose:
    a former primary reads them from its peers to learn that it was superseded."""
    node: Node = request.app.state.node
    ok, reason = await run_in_threadpool(node.healthy)
    if node.cluster is not None:
        epoch, fenced = 0, node.cluster.fenced_reason() is not None
    else:
        ha = await run_in_threadpool(node.ha)
        epoch, fenced = ha.epoch, bool(ha.fenced)
    body = {
        "status": "ok" if ok else "unavailable",
        "role": node.role.value,
        "epoch": epoch,
        "fenced": fenced,
        "reason": reason,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


routes = [
    Route("/status", status, methods=["GET", "HEAD"]),
    Route("/status/replication", manage.replica_health, methods=["GET", "HEAD"]),
]
