"""Git data of a repository: branches, refs, commits and contents.

Ref changes are compare-and-set against the value read just before, so two
writers racing on one ref get a conflict instead of one silently losing.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bulwark.errors import Conflict, GitError, InvalidInput, NotFound, ValidationFailed
from bulwark.git.model import Ref
from bulwark.git.runner import ZERO_OID
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
from bulwark.http.api.serializers import branch_json, commit_json, content_json, ref_json, repo_api
from bulwark.http.errors import DOCS_URL
from bulwark.models import Permission
from bulwark.names import MAX_REF_NAME
from bulwark.services.repositories import RepoAccess

MAX_CONTENT_BYTES = 1024 * 1024
_SHA = re.compile(r"^[0-9a-f]{40}$")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class EmptyRepository(Conflict):
    def __init__(self) -> None:
        super().__init__("Git Repository is empty.")


class NoContents(NotFound):
    def __init__(self) -> None:
        super().__init__("This repository is empty.")


async def _all_refs(ctx: Ctx, access: RepoAccess) -> list[Ref]:
    return await call(ctx.node.git.refs, access.repo.storage_id)


def _check_rev(rev: str) -> str:
    """A branch, tag or sha as given by a client; never an option or a revision expression."""
    if not rev or rev.startswith("-") or _BAD_REF_CHARS.search(rev) or ".." in rev or "@{" in rev:
        raise NotFound(f"No commit found for SHA: {rev}")
    return rev


async def _resolve(ctx: Ctx, access: RepoAccess, rev: str) -> str:
    oid = await call(ctx.node.git.resolve, access.repo.storage_id, _check_rev(rev))
    if oid is None:
        raise NotFound(f"No commit found for SHA: {rev}")
    return oid


# -- branches ------------------------------------------------------------------------


async def list_branches(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    api = repo_api(ctx, access.full_name)
    refs = await call(ctx.node.git.refs, access.repo.storage_id, "refs/heads/")
    items = [
        {
            "name": r.name.removeprefix("refs/heads/"),
            "commit": {"sha": r.oid, "url": f"{api}/commits/{r.oid}"},
            "protected": False,
        }
        for r in refs
    ]
    return paginate_list(request, items)


async def get_branch(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    name = request.path_params["branch"]
    ref = await _exact_ref(ctx, access, f"refs/heads/{name}")
    commit = await call(ctx.node.git.commit, access.repo.storage_id, ref.oid) if ref else None
    if commit is None:
        raise NotFound("Branch not found")
    return JSONResponse(branch_json(ctx, access.full_name, name, commit_json(ctx, access.full_name, commit)))


# -- refs ----------------------------------------------------------------------------


def _qualified(name: str) -> str:
    """``heads/main`` as GitHub's URLs spell it, or ``refs/heads/main``: both mean the same ref."""
    return name if name.startswith("refs/") else f"refs/{name}"


def _full_ref(name: str) -> str:
    """A fully qualified ref name that git would accept; 422 otherwise."""
    full = _qualified(name)
    if len(full) > MAX_REF_NAME:
        raise ValidationFailed(
            f"ref is too long (maximum is {MAX_REF_NAME} characters)", resource="Reference", field="ref"
        )
    parts = full.split("/")
    bad = (
        len(parts) < 3
        or any(not p or p.startswith(".") or p.endswith((".", ".lock")) for p in parts)
        or ".." in full
        or "@{" in full
        or full == "@"
        or _BAD_REF_CHARS.search(full)
    )
    if bad:
        raise InvalidInput(f"invalid ref name {name!r}", field="ref")
    return full


async def _exact_ref(ctx: Ctx, access: RepoAccess, full: str) -> Ref | None:
    try:
        full = _full_ref(full)
    except InvalidInput:
        return None
    refs = await call(ctx.node.git.refs, access.repo.storage_id, full)
    return next((r for r in refs if r.name == full), None)


async def list_refs(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    refs = await _all_refs(ctx, access)
    if not refs:
        raise EmptyRepository()
    return paginate_list(request, refs, render=lambda r: ref_json(ctx, access.full_name, r))


async def _matching(ctx: Ctx, access: RepoAccess, ref: str) -> list[Ref]:
    # A plain string prefix, as on GitHub: heads/feat matches heads/feature-a.
    prefix = _qualified(ref)
    return [r for r in await _all_refs(ctx, access) if r.name.startswith(prefix)]


async def get_refs(request: Request) -> JSONResponse:
    """An exact match is one ref; otherwise every ref starting with the name, or 404."""
    ctx = await context(request)
    access = await find_repo(ctx)
    matches = await _matching(ctx, access, request.path_params["ref"])
    exact = next((r for r in matches if r.name == _qualified(request.path_params["ref"])), None)
    if exact is not None:
        return JSONResponse(ref_json(ctx, access.full_name, exact))
    if not matches:
        raise NotFound("Not Found")
    return paginate_list(request, matches, render=lambda r: ref_json(ctx, access.full_name, r))


async def get_matching_refs(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    matches = await _matching(ctx, access, request.path_params["ref"])
    return paginate_list(request, matches, render=lambda r: ref_json(ctx, access.full_name, r))


async def get_ref(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    ref = await _exact_ref(ctx, access, request.path_params["ref"])
    if ref is None:
        raise NotFound("Not Found")
    return JSONResponse(ref_json(ctx, access.full_name, ref))


async def _writable(request: Request) -> tuple[Ctx, RepoAccess, dict[str, Any]]:
    ctx = await write_context(request)
    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.PUSH)
    return ctx, access, await json_body(request)


async def _target(ctx: Ctx, access: RepoAccess, data: dict[str, Any], ref: str) -> Ref:
    """``ref`` as it will be once set to the object named by the body's ``sha``."""
    sha = required(data, "sha", str).lower()
    kind = await call(ctx.node.git.object_type, access.repo.storage_id, sha) if _SHA.match(sha) else None
    if kind is None:
        raise InvalidInput("Object does not exist", field="sha")
    if ref.startswith("refs/heads/") and kind != "commit":
        raise InvalidInput(f"a branch must point at a commit, not a {kind}", field="sha")
    return Ref(name=ref, oid=sha, type=kind)


async def _done(ctx: Ctx, access: RepoAccess, ref: Ref, old: str, status: int) -> JSONResponse:
    # As a push: replicas learn of it at once and webhooks announce it.
    await call(ctx.node.record_push, access.repo, [(old, ref.oid, ref.name)], ctx.user)
    return JSONResponse(ref_json(ctx, access.full_name, ref), status_code=status)


async def create_ref(request: Request) -> JSONResponse:
    ctx, access, data = await _writable(request)
    name = required(data, "ref", str)
    if not name.startswith("refs/"):
        raise InvalidInput("ref must be fully qualified, like refs/heads/main", field="ref")
    full = _full_ref(name)
    target = await _target(ctx, access, data, full)
    try:
        await call(ctx.node.git.update_ref, access.repo.storage_id, full, target.oid, ZERO_OID)
    except GitError:
        if await _exact_ref(ctx, access, full) is not None:
            raise InvalidInput("Reference already exists", field="ref") from None
        # Most likely refs/heads/a blocks refs/heads/a/b, or the other way round.
        raise InvalidInput(f"cannot create {full}: it clashes with an existing ref", field="ref") from None
    return await _done(ctx, access, target, ZERO_OID, 201)


async def _current(ctx: Ctx, access: RepoAccess, name: str) -> Ref:
    ref = await _exact_ref(ctx, access, name)
    if ref is None:
        raise InvalidInput("Reference does not exist", field="ref")
    return ref


async def _fast_forward(ctx: Ctx, access: RepoAccess, old: Ref, new: Ref) -> bool:
    if old.oid == new.oid:
        return True
    if old.type != "commit" or new.type != "commit":
        return False
    # Nothing reachable from old that is not reachable from new: old is an ancestor of new.
    return not await call(ctx.node.git.log, access.repo.storage_id, f"{new.oid}..{old.oid}", limit=1)


async def update_ref(request: Request) -> JSONResponse:
    ctx, access, data = await _writable(request)
    current = await _current(ctx, access, request.path_params["ref"])
    target = await _target(ctx, access, data, current.name)
    force = field(data, "force", bool, default=False)
    if not await _fast_forward(ctx, access, current, target):
        if not force:
            raise InvalidInput("Update is not a fast forward", field="sha")
        if not access.repo.allow_force_push:
            raise InvalidInput("Force pushes are not allowed in this repository", field="force")
    try:
        await call(ctx.node.git.update_ref, access.repo.storage_id, current.name, target.oid, current.oid)
    except GitError:
        raise Conflict(f"{current.name} changed while it was being updated; read it again and retry") from None
    return await _done(ctx, access, target, current.oid, 200)


async def delete_ref(request: Request) -> Response:
    ctx, access, _ = await _writable(request)
    current = await _current(ctx, access, request.path_params["ref"])
    if current.name == f"refs/heads/{access.repo.default_branch}":
        raise InvalidInput("Cannot delete the default branch", field="ref")
    try:
        await call(ctx.node.git.delete_ref, access.repo.storage_id, current.name, current.oid)
    except GitError:
        raise Conflict(f"{current.name} changed while it was being deleted; read it again and retry") from None
    await call(ctx.node.record_push, access.repo, [(current.oid, ZERO_OID, current.name)], ctx.user)
    return no_content()


# -- commits -------------------------------------------------------------------------


def _check_path(raw: str, field_name: str = "path") -> str:
    path = raw.strip("/")
    parts = path.split("/") if path else []
    if any(p in ("", ".", "..") for p in parts) or "\x00" in path or path.startswith(":"):
        raise InvalidInput(f"invalid path {raw!r}", field=field_name)
    return path


async def list_commits(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    if not await _all_refs(ctx, access):
        raise EmptyRepository()
    oid = await _resolve(ctx, access, request.query_params.get("sha") or access.repo.default_branch)
    path = _check_path(request.query_params.get("path", "")) or None
    params = page_params(request)
    commits = await call(
        ctx.node.git.log, access.repo.storage_id, oid, limit=params.per_page + 1, skip=params.offset, path=path
    )
    items = [commit_json(ctx, access.full_name, c) for c in commits[: params.per_page]]
    return paginated(request, items, params, len(commits) > params.per_page)


async def get_commit(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    oid = await _resolve(ctx, access, request.path_params["ref"])
    commit = await call(ctx.node.git.commit, access.repo.storage_id, oid)
    if commit is None:
        raise NotFound(f"No commit found for SHA: {request.path_params['ref']}")
    return JSONResponse(commit_json(ctx, access.full_name, commit))


# -- contents ------------------------------------------------------------------------


def _too_large(size: int) -> JSONResponse:
    message = (
        f"This API returns blobs up to {MAX_CONTENT_BYTES} bytes; this one has {size}. Clone the repository to read it."
    )
    error = {"resource": "Blob", "field": "data", "code": "too_large"}
    return JSONResponse({"message": message, "errors": [error], "documentation_url": DOCS_URL}, status_code=403)


async def get_contents(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await find_repo(ctx)
    path = _check_path(request.path_params.get("path", ""))
    storage = access.repo.storage_id
    if not await _all_refs(ctx, access):
        raise NoContents()
    ref = request.query_params.get("ref") or access.repo.default_branch
    oid = await _resolve(ctx, access, ref)
    entry = await call(ctx.node.git.tree_entry, storage, oid, path)
    if entry is None:
        raise NotFound("Not Found")
    if entry.type == "tree":
        entries = await call(ctx.node.git.list_tree, storage, entry.sha, path)
        return JSONResponse([content_json(ctx, access.full_name, e, ref, listing=True) for e in entries])
    data = content_json(ctx, access.full_name, entry, ref, listing=False)
    if entry.type != "blob":
        return JSONResponse(data)  # a submodule: there is nothing to read here
    if entry.size > MAX_CONTENT_BYTES:
        return _too_large(entry.size)
    blob = await call(ctx.node.git.read_blob, storage, entry.sha)
    if data["type"] == "symlink":
        data["target"] = blob.decode(errors="replace")
    else:
        data.update(encoding="base64", content=base64.encodebytes(blob).decode("ascii"))
    return JSONResponse(data)


_BASE = "/repos/{owner}/{repo}"

routes = [
    Route(_BASE + "/branches", list_branches, methods=["GET"]),
    Route(_BASE + "/branches/{branch:path}", get_branch, methods=["GET"]),
    Route(_BASE + "/git/refs", list_refs, methods=["GET"]),
    Route(_BASE + "/git/refs", create_ref, methods=["POST"]),
    Route(_BASE + "/git/refs/{ref:path}", get_refs, methods=["GET"]),
    Route(_BASE + "/git/refs/{ref:path}", update_ref, methods=["PATCH"]),
    Route(_BASE + "/git/refs/{ref:path}", delete_ref, methods=["DELETE"]),
    Route(_BASE + "/git/ref/{ref:path}", get_ref, methods=["GET"]),
    Route(_BASE + "/git/matching-refs/{ref:path}", get_matching_refs, methods=["GET"]),
    Route(_BASE + "/commits", list_commits, methods=["GET"]),
    Route(_BASE + "/commits/{ref:path}", get_commit, methods=["GET"]),
    Route(_BASE + "/contents", get_contents, methods=["GET"]),
    Route(_BASE + "/contents/{path:path}", get_contents, methods=["GET"]),
]
