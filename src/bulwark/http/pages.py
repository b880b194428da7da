"""The status page (``/manage/status``) and the overview it polls, for site administrators.

Logging in: a request with an ``Authorization`` header is judged by it as anywhere else. A browser
logs in once, through the form or by opening ``/manage/status?token=TOKEN``, and gets a session
cookie (``HttpOnly``, ``SameSite=Strict``, path ``/manage``, ``Secure`` over HTTPS) that is signed,
not the token (services/sessions.py); the URL is cleaned by a redirect. Every node serves the page,
and a token or a session is valid on every node of a deployment, so the node asked passes the
caller's credential on when it asks its peers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from bulwark.errors import BadRequest, Forbidden, InvalidInput, Unauthenticated
from bulwark.http.auth import authenticate
from bulwark.monitoring import overview as ov
from bulwark.monitoring import page
from bulwark.monitoring.gather import NodeMonitor
from bulwark.node import Node
from bulwark.services.permissions import require_site_admin

COOKIE = "bulwark_admin"
COOKIE_MAX_AGE = 12 * 3600
LOGIN_BODY_LIMIT = 4096
PAGE_PATH = "/manage/status"

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def site_admin_credential(request: Request) -> dict[str, str]:
    """The headers that carry the credential of the site administrator making this request
    (an ``Authorization`` header, or the session cookie), to be passed on to peers."""
    node: Node = request.app.state.node
    header = request.headers.get("authorization")
    if header:
        principal = await authenticate(request)
        credential = {"Authorization": header}
    else:
        session = request.cookies.get(COOKIE)
        if not session:
            raise Unauthenticated("log in with a site administrator's token")
        principal = await run_in_threadpool(node.accounts.authenticate_session, session)
        request.state.principal = principal  # for the access log, as authenticate() does
        credential = {"Cookie": f"{COOKIE}={session}"}
    require_site_admin(principal, "status pages")
    return credential


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _logged_in(request: Request, session: str) -> Response:
    response = RedirectResponse(PAGE_PATH, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, session, max_age=COOKIE_MAX_AGE, path="/manage", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


async def _log_in(request: Request, token: str) -> Response:
    """The login form again with why ``token`` may not open the page, or the session and a redirect."""
    node: Node = request.app.state.node
    try:
        principal, session = await run_in_threadpool(node.accounts.start_session, token.strip())
    except (Unauthenticated, Forbidden) as exc:
        return _html(page.login_html(exc.message), 401)
    if not principal.site_admin:
        return _html(page.login_html("this token is not a site administrator's (site_admin scope)"), 401)
    return _logged_in(request, session)


async def status_page(request: Request) -> Response:
    token = request.query_params.get("token")
    if token is not None:
        return await _log_in(request, token)
    try:
        await site_admin_credential(request)
    except (Unauthenticated, Forbidden) as exc:
        anonymous = "authorization" not in request.headers and COOKIE not in request.cookies
        return _html(page.login_html(None if anonymous else exc.message), 401)
    return _html(page.status_html())


async def login(request: Request) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_BODY_LIMIT:
            raise BadRequest("the login form is too large")
    token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    if not token:
        return _html(page.login_html("enter a token"), 401)
    return await _log_in(request, token)


async def logout(request: Request) -> Response:
    node: Node = request.app.state.node
    session = request.cookies.get(COOKIE)
    if session:
        await run_in_threadpool(node.accounts.end_session, session)
    response = RedirectResponse(PAGE_PATH, status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/manage", httponly=True, samesite="strict")
    return response


async def script(request: Request) -> Response:
    return Response(page.SCRIPT, media_type="text/javascript", headers=SECURITY_HEADERS)


async def style(request: Request) -> Response:
    return Response(page.STYLE, media_type="text/css", headers=SECURITY_HEADERS)


async def monitoring_overview(request: Request) -> Response:
    """This node's checks (``scope=node``) or every node's (``scope=all``, the default)."""
    try:
        credential = await site_admin_credential(request)
    except (Unauthenticated, Forbidden) as exc:
        # No WWW-Authenticate challenge: a browser must not answer the page's polling with a password prompt.
        return JSONResponse({"message": exc.message}, status_code=exc.status_code,
                            headers={"Cache-Control": "no-store"})
    try:
        scope = ov.Scope(request.query_params.get("scope", ov.Scope.ALL.value))
    except ValueError:
        raise InvalidInput("scope must be 'node' or 'all'", field="scope") from None
    monitor: NodeMonitor = request.app.state.monitor
    async with httpx.AsyncClient(timeout=ov.PEER_TIMEOUT, follow_redirects=False) as client:
        body: dict[str, Any] = await ov.build(monitor, scope, ov.http_fetcher(client, credential))
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


routes: list[BaseRoute] = [
    Route(PAGE_PATH, status_page, methods=["GET"]),
    Route(page.LOGIN_PATH, login, methods=["POST"]),
    Route(page.LOGOUT_PATH, logout, methods=["POST"]),
    Route(page.SCRIPT_PATH, script, methods=["GET"]),
    Route(page.STYLE_PATH, style, methods=["GET"]),
    Route(ov.OVERVIEW_PATH, monitoring_overview, methods=["GET"]),
]
