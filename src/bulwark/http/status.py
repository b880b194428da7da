"""``/status``: what a load balancer asks before sending traffic here."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bulwark.node import Node


async def status(request: Request) -> JSONResponse:
    node: Node = request.app.state.node
    ok, reason = await run_in_threadpool(node.healthy)
    body = {"status": "ok" if ok else "unavailable", "role": node.role.value, "reason": reason}
    return JSONResponse(body, status_code=200 if ok else 503)


routes = [Route("/status", status, methods=["GET", "HEAD"])]
