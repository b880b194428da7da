"""Repositories: create, list, read, change, transfer and delete."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bulwark.errors import AlreadyExists, Forbidden, InvalidInput, NotFound
from bulwark.http.api import cursors
from bulwark.http.api.common import (
    Ctx,
    call,
    context,
    field,
    find_repo,
    json_body,
    no_content,
    page_params,
    paginate_list,
    paginated,
    required,
    write_context,
)
from bulwark.http.api.orgs import caller_role, require_org_role
from bulwark.http.api.serializers import repo_json
from bulwark.models import Account, OrgRole, Permission, Repository, Scope, Visibility
from bulwark.services.repo_lists import Start, sort_key
from bulwark.services.repositories import RepoAccess

NAME_TAKEN = "name already exists on this account"


def _visibility(data: dict[str, Any]) -> Visibility | None:
    """The visibility asked for by ``private`` and/or ``visibility``; None if neither is given."""
    private = field(data, "private", bool)
    text = field(data, "visibility", str)
    if text is not None and text not in ("public", "private"):
        raise InvalidInput("visibility must be 'public' or 'private'", field="visibility")
    chosen = Visibility(text) if text is not None else None
    if private is not None:
        implied = Visibility.PRIVATE if private else Visibility.PUBLIC
        if chosen is not None and chosen is not implied:
            raise InvalidInput("private and visibility disagree", field="visibility")
        chosen = implied
    return chosen


def _require_repo_scope(ctx: Ctx, visibility: Visibility) -> None:
    # public_repo suffices for public repositories; private ones take the full repo scope.
    if not ctx.principal.has_scope(Scope.REPO):
        ctx.require_scope(Scope.REPO if visibility is Visibility.PRIVATE else Scope.PUBLIC_REPO)


def _view(ctx: Ctx, access: RepoAccess) -> dict[str, Any]:
    return repo_json(ctx, access.repo, access.owner, access.permission)


async def _fresh(ctx: Ctx, repo: Repository, owner: Account) -> dict[str, Any]:
    permission = await call(ctx.node.repos.permission, ctx.principal, repo, owner)
    return repo_json(ctx, repo, owner, permission)


async def _keep_admin(ctx: Ctx, repo: Repository, owner: Account) -> None:
    """Members only read their organization's repositories; one they bring in, they administer."""
    if owner.is_org and await caller_role(ctx, owner) is OrgRole.MEMBER:
        await call(ctx.node.repos.add_collaborator, repo, ctx.user, Permission.ADMIN, ctx.user)


async def _create(ctx: Ctx, owner: Account, data: dict[str, Any]) -> JSONResponse:
    name = required(data, "name", str)
    description = field(data, "description", str) or ""
    visibility = _visibility(data) or Visibility.PUBLIC
    if field(data, "auto_init", bool):
        raise InvalidInput("auto_init is not supported: push a first commit instead", field="auto_init")
    _require_repo_scope(ctx, visibility)
    try:
        repo = await call(ctx.node.repos.create, owner, name, visibility=visibility, description=description,
                          sender=ctx.user)
    except AlreadyExists:
        raise InvalidInput(NAME_TAKEN, field="name") from None
    await _keep_admin(ctx, repo, owner)
    return JSONResponse(await _fresh(ctx, repo, owner), status_code=201)


async def create_user_repo(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    data = await json_body(request)
    return await _create(ctx, ctx.user, data)


async def create_org_repo(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    org = await call(ctx.node.accounts.get_org, request.path_params["org"])
    await require_org_role(ctx, org, OrgRole.MEMBER)
    return await _create(ctx, org, await json_body(request))


_SORT_KEYS = {
    "full_name": sort_key,
    "created": lambda a: (a.repo.created_at, a.repo.id),
    "updated": lambda a: (a.repo.updated_at, a.repo.id),
    "pushed": lambda a: (a.repo.pushed_at or a.repo.created_at, a.repo.id),
}


def _list_options(request: Request, default_sort: str) -> tuple[str, str, str]:
    """A list's visibility filter, sort and direction, as the query gives them."""
    query = request.query_params
    kind = query.get("type")
    visibility = query.get("visibility", kind if kind in ("public", "private") else "all")
    if visibility not in ("all", "public", "private"):
        raise InvalidInput("visibility must be all, public or private", field="visibility")
    sort = query.get("sort", default_sort)
    if sort not in _SORT_KEYS:
        raise InvalidInput(f"sort must be one of {', '.join(_SORT_KEYS)}", field="sort")
    direction = query.get("direction", "asc" if sort == "full_name" else "desc")
    if direction not in ("asc", "desc"):
        raise InvalidInput("direction must be asc or desc", field="direction")
    return visibility, sort, direction


def _listed(request: Request, ctx: Ctx, accesses: list[RepoAccess], default_sort: str) -> JSONResponse:
    visibility, sort, direction = _list_options(request, default_sort)
    if visibility != "all":
        accesses = [a for a in accesses if a.repo.visibility.value == visibility]
    accesses = sorted(accesses, key=_SORT_KEYS[sort], reverse=direction == "desc")
    return paginate_list(request, accesses, render=lambda a: _view(ctx, a))


async def _by_name(request: Request, ctx: Ctx,
                   read: Callable[[Start, int], list[RepoAccess]]) -> JSONResponse:
    """A page of a list in name order, read from the store from where the page starts (``read``):
    from the cursor of the previous page's link, or past the pages before it."""
    params = page_params(request)
    after = cursors.decode(request)
    start = Start(after=after) if after is not None else Start(offset=params.offset)
    found = await call(read, start, params.per_page + 1)  # one more than the page: is there a next one?
    page = found[: params.per_page]
    has_next = len(found) > params.per_page
    cursor = cursors.encode(request, sort_key(page[-1])) if has_next else None
    return paginated(request, [_view(ctx, a) for a in page], params, has_next, cursor)


async def _owned_listing(request: Request, ctx: Ctx, owner: Account, default_sort: str) -> JSONResponse:
    """One owner's repositories. In name order (the default for a user's) a page reads about a
    page's worth of records; other orders are cut from the whole list."""
    visibility, sort, direction = _list_options(request, default_sort)
    if sort != "full_name" or direction != "asc":
        return _listed(request, ctx, await _owned_by(ctx, owner), default_sort)

    def read(start: Start, limit: int) -> list[RepoAccess]:
        return ctx.node.repo_lists.owned(ctx.principal, owner, visibility=visibility, start=start, limit=limit)

    return await _by_name(request, ctx, read)


def _affiliations(request: Request) -> set[str]:
    known = {"owner", "collaborator", "organization_member"}
    kind = request.query_params.get("type")
    if kind is not None:
        by_type = {
            "all": known,
            "owner": {"owner"},
            "public": known,
            "private": known,
            "member": {"collaborator", "organization_member"},
        }
        if kind not in by_type:
            raise InvalidInput("type must be all, owner, public, private or member", field="type")
        return by_type[kind]
    chosen = {a.strip() for a in request.query_params.get("affiliation", ",".join(known)).split(",")}
    if not chosen <= known:
        raise InvalidInput(f"affiliation must be a list of {', '.join(sorted(known))}", field="affiliation")
    return chosen


async def list_own_repos(request: Request) -> JSONResponse:
    ctx = await context(request)
    user = ctx.user
    affiliations = _affiliations(request)
    visibility, sort, direction = _list_options(request, "full_name")
    if sort == "full_name" and direction == "asc":

        def read(start: Start, limit: int) -> list[RepoAccess]:
            return ctx.node.repo_lists.own(ctx.principal, user, affiliations=affiliations,
                                           visibility=visibility, start=start, limit=limit)

        return await _by_name(request, ctx, read)

    def collect() -> list[RepoAccess]:
        store = ctx.node.store
        collaborations = {c.repo_id for c in store.list_collaborations_of(user.id)}
        org_ids = {m.org_id for m in store.list_memberships_of(user.id)}
        repos = ctx.node.repos.accessible_by(user)
        matching = [
            r
            for r in repos
            if ("owner" in affiliations and r.owner_id == user.id)
            or ("collaborator" in affiliations and r.id in collaborations)
            or ("organization_member" in affiliations and r.owner_id in org_ids)
        ]
        return ctx.node.repos.visible_to(ctx.principal, matching)

    return _listed(request, ctx, await call(collect), "full_name")


async def _owned_by(ctx: Ctx, owner: Account) -> list[RepoAccess]:
    def collect() -> list[RepoAccess]:
        return ctx.node.repos.visible_to(ctx.principal, ctx.node.store.list_repos(owner.id))

    return await call(collect)


async def list_user_repos(request: Request) -> JSONResponse:
    ctx = await context(request)
    owner = await call(ctx.node.accounts.get, request.path_params["username"])
    return await _owned_listing(request, ctx, owner, "full_name")


async def list_org_repos(request: Request) -> JSONResponse:
    ctx = await context(request)
    org = await call(ctx.node.accounts.get_org, request.path_params["org"])
    return await _owned_listing(request, ctx, org, "created")


async def get_repo(request: Request) -> JSONResponse:
    ctx = await context(request)
    return JSONResponse(_view(ctx, await find_repo(ctx)))


async def update_repo(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.ADMIN)
    data = await json_body(request)
    visibility = _visibility(data)
    if visibility is not None:
        _require_repo_scope(ctx, visibility)  # a public_repo token may not hide a repository
    try:
        repo = await call(
            ctx.node.repos.update,
            access.repo,
            name=field(data, "name", str),
            description=field(data, "description", str),
            visibility=visibility,
            default_branch=field(data, "default_branch", str),
            allow_force_push=field(data, "allow_force_pushes", bool),
            sender=ctx.user,
        )
    except AlreadyExists:
        raise InvalidInput(NAME_TAKEN, field="name") from None
    return JSONResponse(await _fresh(ctx, repo, access.owner))


async def delete_repo(request: Request) -> Response:
    ctx = await write_context(request)
    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.ADMIN)
    ctx.require_scope(Scope.DELETE_REPO)
    await call(ctx.node.repos.delete, access.repo, ctx.user)
    return no_content()


async def transfer_repo(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.ADMIN)
    data = await json_body(request)
    new_owner_login = required(data, "new_owner", str)
    new_name = field(data, "new_name", str)
    try:
        target = await call(ctx.node.accounts.get, new_owner_login)
    except NotFound:
        raise InvalidInput(f"no user or organization named {new_owner_login!r}", field="new_owner") from None
    # Handing a repository to someone else takes their consent, which Bulwark has no way to ask
    # for: only site admins may; others move repositories to themselves or their organizations.
    if not ctx.principal.site_admin:
        if target.is_org:
            await require_org_role(ctx, target, OrgRole.MEMBER)
        elif target.id != ctx.user.id:
            raise Forbidden("repositories can be transferred only to yourself or an organization you belong to")
    try:
        repo = await call(ctx.node.repos.transfer, access.repo, target, new_name)
    except AlreadyExists:
        raise InvalidInput(NAME_TAKEN, field="new_name" if new_name else "new_owner") from None
    await _keep_admin(ctx, repo, target)
    return JSONResponse(await _fresh(ctx, repo, target), status_code=202)


routes = [
    Route("/user/repos", list_own_repos, methods=["GET"]),
    Route("/user/repos", create_user_repo, methods=["POST"]),
    Route("/users/{username}/repos", list_user_repos, methods=["GET"]),
    Route("/orgs/{org}/repos", list_org_repos, methods=["GET"]),
    Route("/orgs/{org}/repos", create_org_repo, methods=["POST"]),
    Route("/repos/{owner}/{repo}", get_repo, methods=["GET"]),
    Route("/repos/{owner}/{repo}", update_repo, methods=["PATCH"]),
    Route("/repos/{owner}/{repo}", delete_repo, methods=["DELETE"]),
    Route("/repos/{owner}/{repo}/transfer", transfer_repo, methods=["POST"]),
]
