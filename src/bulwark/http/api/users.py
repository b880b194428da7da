"""Users: the authenticated user, and users by login."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bulwark.errors import InvalidInput
from bulwark.http.api.common import (
    call,
    context,
    field,
    json_body,
    page_params,
    paginate_list,
    paginated,
    required,
    write_context,
)
from bulwark.http.api.serializers import account_json, emails_json
from bulwark.models import AccountType, Scope


async def get_authenticated_user(request: Request) -> JSONResponse:
    ctx = await context(request)
    return JSONResponse(account_json(ctx, ctx.user, full=True))


async def update_authenticated_user(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    ctx.require_scope(Scope.USER)
    data = await json_body(request)
    changes: dict[str, object] = {}
    name = field(data, "name", str)
    if name is not None:
        changes["name"] = name.strip()
    email = field(data, "email", str)
    if email is not None:
        # GitHub's ``email`` here is "the publicly visible email address": setting it shows it.
        changes["email"] = email.strip()
        changes["email_public"] = bool(changes["email"])
    user = await call(ctx.node.accounts.update, ctx.user, **changes) if changes else ctx.user
    return JSONResponse(account_json(ctx, user, full=True))


async def list_emails(request: Request) -> JSONResponse:
    ctx = await context(request)
    return paginate_list(request, emails_json(ctx.user))


async def list_public_emails(request: Request) -> JSONResponse:
    ctx = await context(request)
    return paginate_list(request, emails_json(ctx.user, public_only=True))


async def set_email_visibility(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    ctx.require_scope(Scope.USER)
    visibility = required(await json_body(request), "visibility", str)
    if visibility not in ("public", "private"):
        raise InvalidInput("visibility must be 'public' or 'private'", field="visibility")
    user = await call(ctx.node.accounts.update, ctx.user, email_public=visibility == "public")
    return JSONResponse(emails_json(user))


async def get_user(request: Request) -> JSONResponse:
    ctx = await context(request)
    account = await call(ctx.node.accounts.get, request.path_params["username"])
    return JSONResponse(account_json(ctx, account, full=True))


async def list_users(request: Request) -> JSONResponse:
    ctx = await context(request)
    params = page_params(request)
    accounts = await call(
        ctx.node.store.list_accounts, AccountType.USER, limit=params.per_page + 1, offset=params.offset
    )
    items = [account_json(ctx, a) for a in accounts[: params.per_page]]
    return paginated(request, items, params, len(accounts) > params.per_page)


routes = [
    Route("/user", get_authenticated_user, methods=["GET"]),
    Route("/user", update_authenticated_user, methods=["PATCH"]),
    Route("/user/emails", list_emails, methods=["GET"]),
    Route("/user/public_emails", list_public_emails, methods=["GET"]),
    Route("/user/email/visibility", set_email_visibility, methods=["PATCH"]),
    Route("/users", list_users, methods=["GET"]),
    Route("/users/{username}", get_user, methods=["GET"]),
]
