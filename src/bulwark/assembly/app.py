"""The ASGI application of a node: the HTTP transport's routes, the pages, their middleware and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount

from bulwark.gitservice.slots import GitSlots, Limits
from bulwark.http import api, backup, internal, metrics, pages, replication, smart, status
from bulwark.http.accesslog import AccessLog
from bulwark.http.api import keys as api_keys
from bulwark.http.errors import HANDLERS
from bulwark.http.pacing import Limits as PaceLimits
from bulwark.http.pacing import Pacer, Pacing
from bulwark.http.ratelimit import RateLimit, RateLimiter
from bulwark.http.server import Guard, stats
from bulwark.monitoring.gather import NodeMonitor
from bulwark.monitoring.metrics import LimitsCollector, Metrics, NodeCollector, RefCacheCollector
from bulwark.monitoring.webhooks import WebhookCollector
from bulwark.node import Node
from bulwark.web import routes as web
from bulwark.web.render import error_page


def create_app(node: Node, guard: Guard | None = None) -> Starlette:
    """``guard``: the connection limits of the server that runs the app, for its metrics."""
    # Monitoring: this app's own metrics registry, fed by the access log and the git sessions.
    monitor = NodeMonitor(node)
    settings = node.settings
    limiter = RateLimiter(settings.api_rate, settings.api_burst) if settings.api_rate > 0 else None
    pacer = (Pacer(PaceLimits(settings.bad_request_burst, settings.bad_request_rate))
             if settings.bad_request_burst > 0 else None)
    limits = LimitsCollector(node.accounts.throttle.counts, (lambda: stats(guard)) if guard is not None else None,
                             limiter.counts if limiter is not None else None,
                             pacer.counts if pacer is not None else None)
    collectors: list[Any] = [NodeCollector(monitor), RefCacheCollector(node.git.adverts), limits]
    if node.webhooks is not None:
        collectors.append(WebhookCollector(node.webhooks.hooks.figures, node.clock))
    app_metrics = Metrics(collectors)
    routes: list[BaseRoute] = [
        *status.routes,
        *metrics.routes,
        *api_keys.plain_routes,
        # Before the /manage/v1 mount, which would answer 404 for the overview.
        *pages.routes,
        # Git routes first: the replication fetch routes live under /manage/v1 too.
        *smart.routes,
        Mount("/api/v3", routes=api.routes),
        Mount("/manage/v1", routes=[*replication.routes, *backup.routes]),
        *internal.routes,
        # Last: the pages' /{owner} and /{owner}/{repo} would take every path above.
        *web.routes,
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=HANDLERS,
        middleware=[
            Middleware(AccessLog, enabled=settings.access_log, metrics=app_metrics),
            # Outside the rate limit, whose 429s count as strikes.
            Middleware(Pacing, pacer=pacer, trusted_proxies=settings.trusted_proxies, routed=_routed(node)),
            Middleware(RateLimit, limiter=limiter, trusted_proxies=settings.trusted_proxies),
        ],
    )
    app.state.node = node
    app.state.monitor = monitor
    # Errors a browser meets are shown as pages (http/errors.py asks for this).
    app.state.error_page = error_page
    app.state.metrics = app_metrics
    app.state.git_slots = GitSlots(Limits(
        total=settings.max_git_processes, per_client=settings.max_git_per_client, wait=settings.git_slot_wait,
    ))
    return app


def _routed(node: Node) -> Callable[[Request], bool]:
    """Whether a request was routed here by another node of the cluster."""
    def routed(request: Request) -> bool:
        # A request relayed from a node's SSH listener comes from the node's own address: its
        # client is an SSH session, limited there, not an address to pace.
        return node.cluster is not None and (node.cluster.forwarder.is_routed(request)
                                             or node.cluster.forwarder.is_relayed(request))
    return routed
