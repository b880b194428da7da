"""The ASGI application of a node."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount

from bulwark.http import api, backup, internal, manage, smart, status
from bulwark.http.accesslog import AccessLog
from bulwark.http.errors import HANDLERS
from bulwark.node import Node


def create_app(node: Node) -> Starlette:
    routes: list[BaseRoute] = [
        *status.routes,
        # Git routes first: the replication fetch routes live under /manage/v1 too.
        *smart.routes,
        Mount("/api/v3", routes=api.routes),
        Mount("/manage/v1", routes=[*manage.routes, *backup.routes]),
        *internal.routes,
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=HANDLERS,
        middleware=[Middleware(AccessLog, enabled=node.settings.access_log)],
    )
    app.state.node = node
    return app
