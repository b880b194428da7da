"""Repository collaborators. Bulwark adds people directly: there are no pending invitations."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bulwark.errors import InvalidInput, NotFound
from bulwark.http.api.common import call, context, field, find_repo, json_body, no_content, paginate_list, write_context
from bulwark.http.api.serializers import collaborator_json, invitation_json, repo_json, role_name
from bulwark.models import Permission

# GitHub's finer roles, mapped to the nearest level that grants no more than asked.
_ROLES = {
    "pull": Permission.PULL,
    "read": Permission.PULL,
    "triage": Permission.PULL,
    "push": Permission.PUSH,
    "write": Permission.PUSH,
    "maintain": Permission.PUSH,
    "admin": Permission.ADMIN,
}


async def list_collaborators(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.PUSH)
    people = await call(ctx.node.repos.people, access.repo, access.owner)
    return paginate_list(request, people, render=lambda person: collaborator_json(ctx, *person))


async def check_collaborator(request: Request) -> Response:
    ctx = await context(request)
    ctx.user  # noqa: B018  (anonymous callers get 401)
    access = await find_repo(ctx)
    user = await call(ctx.node.accounts.get, request.path_params["username"])
    own = await call(ctx.node.repos.user_permission, access.repo, access.owner, user, via_visibility=False)
    if user.is_org or own is Permission.NONE:
        raise NotFound(f"{user.login!r} is not a collaborator")
    return no_content()


async def add_collaborator(request: Request) -> Response:
    ctx = await write_context(request)
    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.ADMIN)
    data = await json_body(request)
    text = field(data, "permission", str, default="push")
    if text not in _ROLES:
        raise InvalidInput(f"permission must be one of {', '.join(_ROLES)}", field="permission")
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    if user.id == access.owner.id:
        raise InvalidInput("the repository owner cannot be a collaborator", field="username")
    existing = await call(ctx.node.store.get_collaborator, access.repo.id, user.id)
    await call(ctx.node.repos.add_collaborator, access.repo, user, _ROLES[text], ctx.user)
    if existing is not None:
        return no_content()  # GitHub's answer for someone already on the repository
    repo = repo_json(ctx, access.repo, access.owner, access.permission)
    body = invitation_json(ctx, repo, user, ctx.user, _ROLES[text])
    return JSONResponse(body, status_code=201)


async def remove_collaborator(request: Request) -> Response:
    ctx = await write_context(request)
    access = await find_repo(ctx)
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    if user.id != ctx.user.id:  # collaborators may leave on their own
        ctx.node.repos.require(access, Permission.ADMIN)
    await call(ctx.node.repos.remove_collaborator, access.repo, user, ctx.user)
    return no_content()


async def get_permission(request: Request) -> JSONResponse:
    ctx = await context(request)
    ctx.user  # noqa: B018
    access = await find_repo(ctx)
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    permission = await call(ctx.node.repos.user_permission, access.repo, access.owner, user)
    return JSONResponse(
        {
            "permission": permission.label,
            "role_name": role_name(permission),
            "user": collaborator_json(ctx, user, permission),
        }
    )


_BASE = "/repos/{owner}/{repo}/collaborators"

routes = [
    Route(_BASE, list_collaborators, methods=["GET"]),
    Route(_BASE + "/{username}", check_collaborator, methods=["GET"]),
    Route(_BASE + "/{username}", add_collaborator, methods=["PUT"]),
    Route(_BASE + "/{username}", remove_collaborator, methods=["DELETE"]),
    Route(_BASE + "/{username}/permission", get_permission, methods=["GET"]),
]
