"""Who is looking at a page, signing in and out, and the token every form carries.

The session cookie (``bulwark_session``, services/web_sessions.py) is HttpOnly, SameSite=Lax (so a
link from elsewhere arrives signed in, while a form posted from elsewhere does not carry it) and
Secure when the page was served over HTTPS. Forms carry a CSRF token that must equal the
``bulwark_csrf`` cookie (SameSite=Strict, HttpOnly): another site can neither read nor set it, so it
cannot forge a form that matches. Checking it needs no state, so every node checks it alike.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bulwark.errors import BadRequest, BulwarkError, Forbidden, Unauthenticated
from bulwark.http.auth import client_address
from bulwark.node import Node, Traffic
from bulwark.services.permissions import ANONYMOUS, Principal

SESSION_COOKIE = "bulwark_session"
CSRF_COOKIE = "bulwark_csrf"
CSRF_FIELD = "csrf_token"
FORM_LIMIT = 64 * 1024
SESSION_MAX_AGE = 14 * 24 * 3600


class CsrfRefused(Forbidden):
    def __init__(self) -> None:
        super().__init__("this form has expired or was not sent from this site: reload the page and try again")


def node_of(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


async def viewer(request: Request) -> Principal:
    """The signed-in user, or anonymous; a session that has ended counts as signed out."""
    cached = getattr(request.state, "viewer", None)
    if cached is not None:
        return cached
    principal = ANONYMOUS
    value = request.cookies.get(SESSION_COOKIE)
    if value:
        try:
            principal = await run_in_threadpool(node_of(request).accounts.authenticate_web_session, value)
        except (Unauthenticated, Forbidden):
            principal = ANONYMOUS
    request.state.viewer = principal
    request.state.principal = principal  # for the access log
    return principal


def read_only_reason(node: Node) -> str | None:
    """Why forms cannot be sent on this node right now (an HA replica, a fenced node, maintenance)."""
    try:
        node.check_serving(Traffic.WRITE)
    except BulwarkError as exc:
        return exc.message
    return None


async def prepare(request: Request) -> Principal:
    """Read who is looking and fill what every page shows; returns the viewer."""
    principal = await viewer(request)
    node = node_of(request)
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    request.state.new_csrf = token if CSRF_COOKIE not in request.cookies else None
    request.state.web = {
        "viewer": principal.account,
        "site_admin": principal.account is not None and principal.account.site_admin,
        "csrf": token,
        "csrf_field": CSRF_FIELD,
        "read_only": await run_in_threadpool(read_only_reason, node),
        "path": request.url.path,
    }
    return principal


def finish(request: Request, response: Response) -> Response:
    """Set the form token's cookie on a visitor's first page."""
    token = getattr(request.state, "new_csrf", None)
    if token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return response


async def form(request: Request) -> dict[str, str]:
    """A posted form's fields, once its CSRF token has been checked."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            raise BadRequest("the form is too large")
    try:
        fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8") from None
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = fields.pop(CSRF_FIELD, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfRefused()
    return fields


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only, never another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def sign_in(request: Request, fields: dict[str, str]) -> Response:
    """Check the login and password (throttled as any password sign-in) and start a session."""
    node = node_of(request)
    accounts = node.accounts
    login, password = fields.get("login", "").strip(), fields.get("password", "")
    if not login or not password:
        raise Unauthenticated("enter your login and password")
    attempt = await run_in_threadpool(accounts.begin_password, login, client_address(request))
    matched = await asyncio.wrap_future(accounts.passwords.submit(attempt.stored_hash, password))
    principal = await run_in_threadpool(accounts.finish_password, attempt, matched)
    value = await run_in_threadpool(accounts.start_web_session, principal)
    response = RedirectResponse(safe_next(fields.get("next")), status_code=303)
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_MAX_AGE, httponly=True, samesite="lax",
                        path="/", secure=request.url.scheme == "https")
    return response


def sign_out(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


def require_user(principal: Principal, request: Request) -> Any:
    """The signed-in account; a visitor is sent to the sign-in page first."""
    if principal.account is None:
        raise SignInFirst(request.url.path)
    return principal.account


class SignInFirst(Unauthenticated):
    """A page that needs a signed-in user; answered with a redirect to the sign-in form."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in to see this page")
        self.next_path = next_path
