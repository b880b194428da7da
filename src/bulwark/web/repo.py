"""A repository as a page sees it: found for the viewer, its refs, and a ``ref/path`` split.

GitHub's URLs put a ref and a path in one run of segments (``tree/feature/x/src``), and a branch
may hold slashes: the longest run of leading segments that names a branch or tag is the ref, as
GitHub does; failing that, a leading commit id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bulwark.errors import NotFound
from bulwark.git.model import Ref, read_ref_files
from bulwark.models import Permission
from bulwark.node import Node
from bulwark.services.permissions import Principal
from bulwark.services.repositories import RepoAccess

_SHA = re.compile(r"^[0-9a-f]{4,40}$")
_BAD = re.compile(r"[\x00-\x1f\x7f]")


class PageNotFound(NotFound):
    """A 404 whose message is fit for the page (the path, never whether a private thing exists)."""


@dataclass(frozen=True)
class Target:
    """Where in a repository a page points: a ref as written, its commit, and a path under it."""

    ref: str
    oid: str
    path: str


async def find(request: Request, principal: Principal) -> RepoAccess:
    node: Node = request.app.state.node
    owner, name = request.path_params["owner"], request.path_params["repo"].removesuffix(".git")
    try:
        return await run_in_threadpool(node.repos.find, principal, owner, name)
    except NotFound:
        raise PageNotFound(f"There is no repository at {owner}/{name}, or you cannot see it.") from None


def clean_path(path: str) -> str:
    """A path inside the repository: no ``..``, no empty or absolute parts, no control characters."""
    parts = [p for p in path.split("/") if p != ""]
    if path.startswith("/") or _BAD.search(path) or any(p in (".", "..") for p in parts):
        raise PageNotFound("That path is not in this repository.")
    return "/".join(parts)


def _ref_files(node: Node, access: RepoAccess) -> dict[str, str] | None:
    """The repository's refs read from its files (no git process), or None when git must say."""
    read = read_ref_files(node.git.path(access.repo.storage_id))
    return read[1] if read is not None else None


def split_target(node: Node, access: RepoAccess, rest: str) -> Target:
    """``rest`` (``ref`` or ``ref/path``) split and resolved; runs on a worker thread."""
    rest = rest.strip("/")
    if _BAD.search(rest) or not rest:
        raise PageNotFound("That branch, tag or commit does not exist.")
    segments = rest.split("/")
    files = _ref_files(node, access)
    listed = files if files is not None else {r.name: r.oid for r in refs(node, access)}
    names = {n.removeprefix("refs/heads/").removeprefix("refs/tags/") for n in listed
             if n.startswith(("refs/heads/", "refs/tags/"))}
    for cut in range(len(segments), 0, -1):
        ref = "/".join(segments[:cut])
        if ref in names:
            return _resolved(node, access, ref, "/".join(segments[cut:]), files)
    if _SHA.match(segments[0]):
        return _resolved(node, access, segments[0], "/".join(segments[1:]), None)
    raise PageNotFound(f"There is no branch, tag or commit named {segments[0]!r} in {access.full_name}.")


def _resolved(node: Node, access: RepoAccess, ref: str, path: str, files: dict[str, str] | None) -> Target:
    branch = files.get(f"refs/heads/{ref}") if files is not None else None
    if branch is not None:
        return Target(ref, branch, clean_path(path))  # a branch names a commit: no git needed
    for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
        if ref.startswith("-"):
            break
        oid = node.git.resolve(access.repo.storage_id, candidate)
        if oid is not None:
            return Target(ref, oid, clean_path(path))
    raise PageNotFound(f"There is no branch, tag or commit named {ref!r} in {access.full_name}.")


def refs(node: Node, access: RepoAccess) -> list[Ref]:
    return node.git.refs(access.repo.storage_id, "refs/heads/", "refs/tags/")


def default_target(node: Node, access: RepoAccess) -> Target | None:
    """The default branch's tip, or None for an empty repository."""
    branch = access.repo.default_branch
    files = _ref_files(node, access)
    oid = files.get(f"refs/heads/{branch}") if files is not None else None
    oid = oid or node.git.resolve(access.repo.storage_id, f"refs/heads/{branch}")
    if oid is None:
        heads = node.git.refs(access.repo.storage_id, "refs/heads/")
        if not heads:
            return None
        branch, oid = heads[0].name.removeprefix("refs/heads/"), heads[0].oid
    return Target(branch, oid, "")


def view(node: Node, access: RepoAccess, base_url: str) -> dict[str, Any]:
    """What every page of a repository shows about it."""
    full = access.full_name
    return {
        "owner": access.owner.login,
        "name": access.repo.name,
        "full_name": full,
        "description": access.repo.description,
        "private": access.repo.private,
        "default_branch": access.repo.default_branch,
        "can_push": access.permission >= Permission.PUSH,
        "can_admin": access.permission >= Permission.ADMIN,
        "permission": access.permission.label,
        "http_url": f"{base_url}/{full}.git",
        "ssh_url": node.settings.ssh_clone_url(full),
    }


def crumbs(path: str) -> list[tuple[str, str]]:
    """The path's parts, each with the path up to it: for the breadcrumb links."""
    out: list[tuple[str, str]] = []
    so_far = ""
    for part in path.split("/") if path else []:
        so_far = f"{so_far}/{part}" if so_far else part
        out.append((part, so_far))
    return out
