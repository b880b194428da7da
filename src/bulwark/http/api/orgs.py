"""Organizations and their memberships."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bulwark.errors import Forbidden, InvalidInput, NotFound
from bulwark.http.api.common import (
    Ctx,
    call,
    context,
    field,
    json_body,
    no_content,
    page_params,
    paginate_list,
    paginated,
    write_context,
)
from bulwark.http.api.serializers import account_json, membership_json, org_json
from bulwark.models import Account, AccountType, OrgRole, Scope


async def caller_role(ctx: Ctx, org: Account) -> OrgRole | None:
    """The caller's role in ``org``; site admins count as owners."""
    if ctx.principal.site_admin:
        return OrgRole.OWNER
    if ctx.principal.account is None:
        return None
    return await call(ctx.node.accounts.role_in, org, ctx.principal.account)


async def require_org_role(ctx: Ctx, org: Account, needed: OrgRole) -> None:
    """403 unless the caller is a member of ``org`` (``MEMBER``) or one of its owners (``OWNER``)."""
    role = await caller_role(ctx, org)
    if role is None or (needed is OrgRole.OWNER and role is not OrgRole.OWNER):
        what = "an owner" if needed is OrgRole.OWNER else "a member"
        raise Forbidden(f"you must be {what} of the organization {org.login!r}")


async def _org(ctx: Ctx) -> Account:
    return await call(ctx.node.accounts.get_org, ctx.request.path_params["org"])


async def _owner_context(request: Request) -> tuple[Ctx, Account]:
    """A write by an owner of the organization in the path, with the admin:org scope."""
    ctx = await write_context(request)
    ctx.require_scope(Scope.ADMIN_ORG)
    org = await _org(ctx)
    await require_org_role(ctx, org, OrgRole.OWNER)
    return ctx, org


def _role(data: dict[str, object]) -> OrgRole:
    text = field(data, "role", str) or "member"
    try:
        return OrgRole(text)
    except ValueError:
        raise InvalidInput(f"role must be 'member' or 'admin', not {text!r}", field="role") from None


async def list_orgs(request: Request) -> JSONResponse:
    ctx = await context(request)
    params = page_params(request)
    orgs = await call(
        ctx.node.store.list_accounts, AccountType.ORGANIZATION, limit=params.per_page + 1, offset=params.offset
    )
    return paginated(request, [org_json(ctx, o) for o in orgs[: params.per_page]], params, len(orgs) > params.per_page)


async def get_org(request: Request) -> JSONResponse:
    ctx = await context(request)
    return JSONResponse(org_json(ctx, await _org(ctx)))


async def update_org(request: Request) -> JSONResponse:
    ctx, org = await _owner_context(request)
    data = await json_body(request)
    changes = {k: v for k in ("name", "email") if (v := field(data, k, str)) is not None}
    if changes:
        org = await call(ctx.node.accounts.update, org, **changes)
    return JSONResponse(org_json(ctx, org))


async def delete_org(request: Request) -> JSONResponse:
    ctx, org = await _owner_context(request)
    await call(ctx.node.repos.delete_account, org)
    return JSONResponse({}, status_code=202)


async def list_members(request: Request) -> JSONResponse:
    ctx = await context(request)
    org = await _org(ctx)
    role_filter = request.query_params.get("role", "all")
    if role_filter not in ("all", "admin", "member"):
        raise InvalidInput("role must be all, admin or member", field="role")
    # Memberships are concealed, as on GitHub by default: only members see them.
    if await caller_role(ctx, org) is None:
        return paginate_list(request, [])
    role = None if role_filter == "all" else OrgRole(role_filter)
    members = await call(ctx.node.accounts.members, org, role)
    return paginate_list(request, members, render=lambda member: account_json(ctx, member[0]))


async def _visible_membership(ctx: Ctx, org: Account, login: str) -> tuple[Account, OrgRole]:
    """``login``'s membership, if the caller may know of it: members see all, others only their own."""
    user = await call(ctx.node.accounts.get_user, login)
    mine = ctx.principal.account is not None and ctx.principal.account.id == user.id
    role = await call(ctx.node.accounts.role_in, org, user)
    if role is None or not (mine or await caller_role(ctx, org) is not None):
        raise NotFound(f"{login!r} is not a member of {org.login!r}")
    return user, role


async def check_member(request: Request) -> Response:
    ctx = await context(request)
    await _visible_membership(ctx, await _org(ctx), request.path_params["username"])
    return no_content()


async def get_membership(request: Request) -> JSONResponse:
    ctx = await context(request)
    ctx.user  # noqa: B018  (memberships are for signed-in callers)
    org = await _org(ctx)
    user, role = await _visible_membership(ctx, org, request.path_params["username"])
    return JSONResponse(membership_json(ctx, org, user, role))


async def get_own_membership(request: Request) -> JSONResponse:
    ctx = await context(request)
    org = await _org(ctx)
    role = await call(ctx.node.accounts.role_in, org, ctx.user)
    if role is None:
        raise NotFound(f"you are not a member of {org.login!r}")
    return JSONResponse(membership_json(ctx, org, ctx.user, role))


async def set_membership(request: Request) -> JSONResponse:
    ctx, org = await _owner_context(request)
    data = await json_body(request)
    role = _role(data)
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    await call(ctx.node.accounts.set_member, org, user, role)
    return JSONResponse(membership_json(ctx, org, user, role))


async def remove_membership(request: Request) -> Response:
    ctx = await write_context(request)
    org = await _org(ctx)
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    if user.id != ctx.user.id:  # anyone may leave; removing others takes an owner
        ctx.require_scope(Scope.ADMIN_ORG)
        await require_org_role(ctx, org, OrgRole.OWNER)
    await call(ctx.node.accounts.remove_member, org, user)
    return no_content()


async def list_own_orgs(request: Request) -> JSONResponse:
    ctx = await context(request)
    orgs = await call(ctx.node.accounts.orgs_of, ctx.user)
    return paginate_list(request, [org_json(ctx, o) for o in orgs])


async def list_user_orgs(request: Request) -> JSONResponse:
    ctx = await context(request)
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    orgs = await call(ctx.node.accounts.orgs_of, user)
    mine = ctx.principal.account is not None and ctx.principal.account.id == user.id
    visible = [o for o in orgs if mine or await caller_role(ctx, o) is not None]
    return paginate_list(request, [org_json(ctx, o) for o in visible])


routes = [
    Route("/organizations", list_orgs, methods=["GET"]),
    Route("/orgs/{org}", get_org, methods=["GET"]),
    Route("/orgs/{org}", update_org, methods=["PATCH"]),
    Route("/orgs/{org}", delete_org, methods=["DELETE"]),
    Route("/orgs/{org}/members", list_members, methods=["GET"]),
    Route("/orgs/{org}/members/{username}", check_member, methods=["GET"]),
    Route("/orgs/{org}/members/{username}", remove_membership, methods=["DELETE"]),
    Route("/orgs/{org}/memberships/{username}", get_membership, methods=["GET"]),
    Route("/orgs/{org}/memberships/{username}", set_membership, methods=["PUT"]),
    Route("/orgs/{org}/memberships/{username}", remove_membership, methods=["DELETE"]),
    Route("/user/orgs", list_own_orgs, methods=["GET"]),
    Route("/user/memberships/orgs/{org}", get_own_membership, methods=["GET"]),
    Route("/users/{username}/orgs", list_user_orgs, methods=["GET"]),
]
