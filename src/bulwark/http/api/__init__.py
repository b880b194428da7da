"""``/api/v3``: the GitHub REST API v3 shapes, so GitHub clients work unchanged."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulwark.errors import NotFound, Unavailable, UnsupportedMediaType
from bulwark.http.api import admin, collaborators, git_data, hooks, keys, orgs, repos, users
from bulwark.http.api.common import body_is_not_json
from bulwark.node import Node
from bulwark.roles import Traffic
from bulwark.services.permissions import Principal

Endpoint = Callable[[Request], Awaitable[Response]]


class OAuthScopesHeader:
    """``X-OAuth-Scopes`` on every response to an authenticated request, errors included.

    Scripts read it to learn what their token may do, as they do on GitHub.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_scopes(message: Message) -> None:
            if message["type"] == "http.response.start":
                # ``authenticate`` leaves the principal in the request state (the scope's "state").
                principal = scope.get("state", {}).get("principal")
                if isinstance(principal, Principal) and principal.account is not None:
                    headers = MutableHeaders(scope=message)
                    headers["X-OAuth-Scopes"] = ", ".join(sorted(s.value for s in principal.scopes))
            await send(message)

        await self.app(scope, receive, send_with_scopes)


class RequireJSONBodies:
    """415 for a request body that is not JSON, before credentials are checked or the body read.

    See ``body_is_not_json``: this is what stops another site from using a browser's cached
    credentials with a form post.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and body_is_not_json(scope["method"], Headers(scope=scope)):
            raise UnsupportedMediaType(
                "Unsupported 'Content-Type' header: send the body as JSON, with 'Content-Type: application/json'"
            )
        await self.app(scope, receive, send)


def _github_not_found(endpoint: Endpoint) -> Endpoint:
    """GitHub clients tell a missing object by "Not Found" in a 404's message (PyGithub's
    UnknownObjectException); keep the service's explanation after it. Subclasses of
    ``NotFound`` already carry GitHub's own wording."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except NotFound as exc:
            if type(exc) is not NotFound or "not found" in exc.message.lower():
                raise
            raise NotFound(f"Not Found: {exc.message}") from exc

    return wrapped


def in_cluster(endpoint: Endpoint) -> Endpoint:
    """In a cluster, run a git-backed endpoint on a node holding an up-to-date replica.

    The target checks the caller's credentials again (same etcd), so forwarding before
    authorizing reveals nothing: a caller who may not see the repository gets the
    target's 404.
    """

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        node: Node = request.app.state.node
        rt = node.cluster
        if rt is None or rt.forwarder.is_routed(request):
            return await endpoint(request)
        owner = await run_in_threadpool(node.store.get_account, request.path_params["owner"])
        repo = await run_in_threadpool(node.store.get_repo, owner.id, request.path_params["repo"]) if owner else None
        if repo is None:
            return await endpoint(request)  # its own 404
        access = Traffic.READ if request.method in ("GET", "HEAD") else Traffic.WRITE
        route = await run_in_threadpool(rt.route, repo.storage_id, access)
        if route is None:
            raise Unavailable("no up-to-date copy of this repository is reachable right now; try again shortly")
        if route.local:
            return await endpoint(request)
        return await rt.forwarder.forward(request, route.url)

    return wrapped


def _api_route(route: Route, *, git_backed: bool = False) -> Route:
    endpoint = _github_not_found(route.endpoint)
    if git_backed:
        endpoint = in_cluster(endpoint)
    return Route(route.path, endpoint, methods=list(route.methods or ()))


_routes: list[BaseRoute] = [
    _api_route(route, git_backed=module is git_data)
    for module in (users, admin, keys, orgs, repos, collaborators, hooks, git_data)
    for route in module.routes
]

routes: list[BaseRoute] = [
    Mount("", routes=_routes, middleware=[Middleware(OAuthScopesHeader), Middleware(RequireJSONBodies)])
]
