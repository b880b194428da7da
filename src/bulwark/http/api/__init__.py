"""``/api/v3``: the GitHub REST API v3 shapes, so GitHub clients work unchanged."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulwark.errors import NotFound
from bulwark.http.api import admin, collaborators, git_data, orgs, repos, users
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


def _api_route(route: Route) -> Route:
    return Route(route.path, _github_not_found(route.endpoint), methods=list(route.methods or ()))


_routes: list[BaseRoute] = [
    _api_route(route) for module in (users, admin, orgs, repos, collaborators, git_data) for route in module.routes
]

routes: list[BaseRoute] = [Mount("", routes=_routes, middleware=[Middleware(OAuthScopesHeader)])]
