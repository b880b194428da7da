"""``/metrics``: the node's metrics for Prometheus.

Readable without a token from loopback only (a Prometheus or agent on the same machine), and
from anywhere with a site administrator's token (``Authorization: Bearer``, ``token`` or Basic).
A request that came through a proxy which says so (``X-Forwarded-For``, ``Forwarded``) is not
treated as local, even when the proxy itself connects from loopback.
"""

from __future__ import annotations

import ipaddress

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bulwark.http.auth import site_admin
from bulwark.monitoring.metrics import CONTENT_TYPE, Metrics


def is_local(request: Request) -> bool:
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
    client = request.client
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        return False


async def metrics(request: Request) -> Response:
    if not is_local(request):
        await site_admin(request, "metrics (outside loopback)")
    registry: Metrics = request.app.state.metrics
    body = await run_in_threadpool(registry.render)
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


routes: list[BaseRoute] = [Route("/metrics", metrics, methods=["GET"])]
