"""The web interface's routes, in GitHub's URL shapes, and what every page handler is wrapped in.

Every handler takes the request and the viewer. The wrapper reads who is looking, checks that
the node serves reads (maintenance mode shows its message), turns errors into friendly pages and
a page that needs a user into a sign-in redirect. In a cluster, pages that read a repository's
git data run on a node holding an up-to-date replica, as the API's do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from bulwark.errors import BulwarkError
from bulwark.http.api import in_cluster
from bulwark.node import Traffic
from bulwark.services.permissions import Principal
from bulwark.web import admin, browse, highlight, home, render, session, settings

Handler = Callable[[Request, Principal], Awaitable[Response]]


def _page(handler: Handler, *, traffic: Traffic = Traffic.READ) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            principal = await session.prepare(request)
            node = session.node_of(request)
            await run_in_threadpool(node.check_serving, traffic, site_admin=principal.site_admin)
            response = await handler(request, principal)
        except session.SignInFirst as exc:
            response = RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)
        except BulwarkError as exc:
            response = render.error_page(request, exc.status_code, exc.message)
        return session.finish(request, response)

    endpoint.__name__ = handler.__name__
    return endpoint


def _git(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    return in_cluster(_page(handler))


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "code.css":
        return Response(highlight.stylesheet(), media_type="text/css", headers=_STATIC_HEADERS)
    if name not in _STATIC:
        return render.error_page(request, 404, "There is no such file.")
    return Response((render.HERE / "static" / name).read_bytes(), media_type=_STATIC[name], headers=_STATIC_HEADERS)


_STATIC = {"style.css": "text/css", "app.js": "text/javascript", "screenshot.png": "image/png"}
_STATIC_HEADERS = {**render.HEADERS, "Cache-Control": "public, max-age=3600"}

_REPO = "/{owner}/{repo}"

# After every other route of the node: ``/{owner}`` and ``/{owner}/{repo}`` would take theirs.
routes: list[BaseRoute] = [
    Route("/static/{name}", _static, methods=["GET"]),
    Route("/", _page(home.explore), methods=["GET"]),
    Route("/explore", _page(home.explore), methods=["GET"]),
    Route("/login", _page(home.login_form), methods=["GET"]),
    Route("/login", _page(home.login), methods=["POST"]),
    Route("/logout", _page(home.logout), methods=["POST"]),
    Route("/new", _page(settings.new_repo_form), methods=["GET"]),
    Route("/new", _page(settings.new_repo), methods=["POST"]),
    Route("/settings", _page(settings.account), methods=["GET"]),
    Route("/settings", _page(settings.account_post), methods=["POST"]),
    Route("/site-admin", _page(admin.overview, traffic=Traffic.ADMIN), methods=["GET"]),
    Route("/site-admin", _page(admin.overview_post, traffic=Traffic.ADMIN), methods=["POST"]),
    Route("/{owner}", _page(home.owner), methods=["GET"]),
    Route(_REPO, _git(browse.repo_home), methods=["GET"]),
    Route(_REPO + "/tree/{rest:path}", _git(browse.tree), methods=["GET"]),
    Route(_REPO + "/blob/{rest:path}", _git(browse.blob), methods=["GET"]),
    Route(_REPO + "/raw/{rest:path}", _git(browse.raw), methods=["GET"]),
    Route(_REPO + "/blame/{rest:path}", _git(browse.blame), methods=["GET"]),
    Route(_REPO + "/commits", _git(browse.commits), methods=["GET"]),
    Route(_REPO + "/commits/{rest:path}", _git(browse.commits), methods=["GET"]),
    Route(_REPO + "/commit/{sha}", _git(browse.commit), methods=["GET"]),
    Route(_REPO + "/compare/{spec:path}", _git(browse.compare), methods=["GET"]),
    Route(_REPO + "/branches", _git(browse.branches), methods=["GET"]),
    Route(_REPO + "/tags", _git(browse.tags), methods=["GET"]),
    Route(_REPO + "/archive/{rest:path}", _git(browse.archive), methods=["GET"]),
    Route(_REPO + "/settings", _page(settings.repo_settings), methods=["GET"]),
    Route(_REPO + "/settings", _page(settings.repo_settings_post), methods=["POST"]),
]
