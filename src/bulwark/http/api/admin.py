"""Site administration, in the shape of GitHub Enterprise Server's admin API.

Every route takes a site administrator using a token with the ``site_admin``
scope, and is served in maintenance mode too, so admins can work on a drained node.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bulwark.errors import InvalidInput, NotFound
from bulwark.http.api.common import Ctx, call, context, field, json_body, no_content, required
from bulwark.http.api.serializers import account_json, org_json, token_json
from bulwark.models import Account
from bulwark.node import Traffic
from bulwark.services.accounts import parse_scopes


async def _admin(request: Request) -> Ctx:
    ctx = await context(request, Traffic.ADMIN)
    ctx.require_site_admin()
    return ctx


async def _user(ctx: Ctx) -> Account:
    return await call(ctx.node.accounts.get_user, ctx.request.path_params["username"])


def _text(data: dict[str, object], name: str) -> str:
    return (field(data, name, str, default="") or "").strip()


async def create_user(request: Request) -> JSONResponse:
    ctx = await _admin(request)
    data = await json_body(request)
    login = required(data, "login", str)
    user = await call(ctx.node.accounts.create_user, login, name=_text(data, "name"), email=_text(data, "email"))
    return JSONResponse(account_json(ctx, user, full=True), status_code=201)


async def rename_user(request: Request) -> JSONResponse:
    ctx = await _admin(request)
    user = await _user(ctx)
    data = await json_body(request)
    login = required(data, "login", str)
    user = await call(ctx.node.accounts.update, user, login=login)
    url = ctx.url(f"/api/v3/users/{user.login}")
    return JSONResponse({"message": f"user renamed to {user.login}", "url": url}, status_code=202)


async def delete_user(request: Request) -> Response:
    ctx = await _admin(request)
    user = await _user(ctx)
    await call(ctx.node.accounts.check_deletable, user)
    await call(ctx.node.repos.delete_account, user)
    return no_content()


async def suspend(request: Request) -> Response:
    ctx = await _admin(request)
    await json_body(request)  # an optional {"reason": ...}; still has to be valid JSON
    await call(ctx.node.accounts.set_suspended, await _user(ctx), True)
    return no_content()


async def unsuspend(request: Request) -> Response:
    ctx = await _admin(request)
    await call(ctx.node.accounts.set_suspended, await _user(ctx), False)
    return no_content()


async def create_org(request: Request) -> JSONResponse:
    ctx = await _admin(request)
    data = await json_body(request)
    login = required(data, "login", str)
    admin_login = required(data, "admin", str)
    try:
        owner = await call(ctx.node.accounts.get_user, admin_login)
    except NotFound:
        raise InvalidInput(f"no user named {admin_login!r}", field="admin") from None
    org = await call(ctx.node.accounts.create_org, login, owner=owner, name=_text(data, "profile_name"))
    return JSONResponse(org_json(ctx, org), status_code=201)


def _expiry(data: dict[str, object]) -> datetime | None:
    text = field(data, "expires_at", str)
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"expires_at is not an ISO 8601 time: {text!r}", field="expires_at") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def create_token(request: Request) -> JSONResponse:
    ctx = await _admin(request)
    user = await _user(ctx)
    data = await json_body(request)
    values = required(data, "scopes", list)
    if not all(isinstance(v, str) for v in values):
        raise InvalidInput("scopes must be a list of strings", field="scopes")
    scopes = parse_scopes(values)
    note = _text(data, "note")
    token, secret = await call(ctx.node.accounts.issue_token, user, scopes, note=note, expires_at=_expiry(data))
    return JSONResponse(token_json(token, secret), status_code=201)


async def revoke_tokens(request: Request) -> Response:
    ctx = await _admin(request)
    await call(ctx.node.accounts.revoke_all_tokens, await _user(ctx))
    return no_content()


routes = [
    Route("/admin/users", create_user, methods=["POST"]),
    Route("/admin/users/{username}", rename_user, methods=["PATCH"]),
    Route("/admin/users/{username}", delete_user, methods=["DELETE"]),
    Route("/admin/users/{username}/authorizations", create_token, methods=["POST"]),
    Route("/admin/users/{username}/authorizations", revoke_tokens, methods=["DELETE"]),
    Route("/admin/organizations", create_org, methods=["POST"]),
    Route("/users/{username}/suspended", suspend, methods=["PUT"]),
    Route("/users/{username}/suspended", unsuspend, methods=["DELETE"]),
]
