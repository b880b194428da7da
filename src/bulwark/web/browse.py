"""Pages that show a repository: its tree, files, history, commits, comparisons, branches and tags."""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from bulwark.git import browse as gitview
from bulwark.git.model import Commit, TreeEntry, read_ref_files
from bulwark.http.api.common import base_url
from bulwark.node import Node
from bulwark.services.permissions import Principal
from bulwark.services.repositories import RepoAccess
from bulwark.web import highlight, render
from bulwark.web.kept import Kept
from bulwark.web.render import page
from bulwark.web.repo import PageNotFound, Target, crumbs, default_target, find, split_target, view

COMMITS_PER_PAGE = 30
MAX_TREE_ENTRIES = 5000
MAX_SHOWN_BYTES = 512 * 1024
MAX_BLAME_LINES = 5000
# Renderings of immutable objects (web/kept.py): highlighting is most of a file page's time, a diff
# most of a commit page's.
FILES: Kept[dict[str, Any]] = Kept(32 * 1024 * 1024)
DIFFS: Kept[gitview.Diff] = Kept(64 * 1024 * 1024)
HISTORY: Kept[list[Commit]] = Kept(16 * 1024 * 1024)


def _diff_cost(diff: gitview.Diff) -> int:
    return sum(256 + sum(64 + len(line.text) for line in f.lines) for f in diff.files)


def _log_cost(commits: list[Commit]) -> int:
    return sum(512 + len(c.message) for c in commits)


RAW_HEADERS = {
    # A raw file is never a page of this site: no scripts, no plugins, its own origin in effect.
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache, private",
}


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _base(request: Request, access: RepoAccess) -> dict[str, Any]:
    return {"repo": view(_node(request), access, base_url(request))}


def _sorted(entries: list[TreeEntry]) -> list[TreeEntry]:
    return sorted(entries, key=lambda e: (e.type != "tree", e.name.lower()))


async def repo_home(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    target = await run_in_threadpool(default_target, node, access)
    if target is None:
        return await page(request, "empty.html", **_base(request, access), tab="code")
    return await _tree_page(request, access, target)


async def tree(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    target = await run_in_threadpool(split_target, _node(request), access, request.path_params["rest"])
    return _switched(request, access, "tree", target) or await _tree_page(request, access, target)


def _switched(request: Request, access: RepoAccess, kind: str, target: Target) -> Response | None:
    """The ref switcher's form, sent without JavaScript (``?ref=``): the same path at that ref."""
    ref = request.query_params.get("ref")
    if not ref or ref == target.ref:
        return None
    path = f"/{render.path_url(target.path)}" if target.path else ""
    return _Redirect(f"/{access.full_name}/{kind}/{quote(ref, safe='/')}{path}").response()


def _readme(node: Node, access: RepoAccess, entries: list[TreeEntry]) -> tuple[str, object, bool] | None:
    """The README's name, its content (cleaned HTML for Markdown, else text), and whether it is HTML."""
    found = gitview.find_readme(entries)
    if found is None:
        return None
    head = gitview.read_blob_head(node.git, access.repo.storage_id, found.sha, MAX_SHOWN_BYTES)
    if head.binary:
        return None
    text = head.data.decode("utf-8", "replace")
    if gitview.is_markdown(found.name):
        return found.name, render.markdown(text), True
    return found.name, text, False


async def _tree_page(request: Request, access: RepoAccess, target: Target) -> Response:
    node = _node(request)
    sid = access.repo.storage_id

    def read() -> dict[str, Any]:
        entry = node.git.tree_entry(sid, target.oid, target.path)
        if entry is None:
            raise PageNotFound(f"There is no {target.path!r} at {target.ref} in {access.full_name}.")
        if entry.type != "tree":
            raise _Redirect(f"/{access.full_name}/blob/{quote(target.ref)}/{render.path_url(target.path)}")
        listed, total = gitview.list_tree_head(node.git, sid, entry.sha, target.path, MAX_TREE_ENTRIES)
        entries = _sorted(listed)
        last = node.git.log(sid, target.oid, limit=1, path=target.path or None)
        return {
            "entries": entries, "total": total,
            "readme": _readme(node, access, entries),
            "last_commit": last[0] if last else None,
            **_ref_names(node, sid),
        }

    try:
        values = await run_in_threadpool(read)
    except _Redirect as redirect:
        return redirect.response()
    return await page(request, "tree.html", **_base(request, access), tab="code", target=target,
                      crumbs=crumbs(target.path), **values)


def _ref_names(node: Node, sid: str) -> dict[str, list[str]]:
    """Branch and tag names for the ref switcher, from the ref files when they can be read."""
    read = read_ref_files(node.git.path(sid))
    names = sorted(read[1]) if read is not None else [r.name for r in node.git.refs(sid, "refs/heads/", "refs/tags/")]
    return {"branches": [n.removeprefix("refs/heads/") for n in names if n.startswith("refs/heads/")],
            "tags": [n.removeprefix("refs/tags/") for n in names if n.startswith("refs/tags/")]}


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location

    def response(self) -> Response:
        return Response(status_code=302, headers={"Location": self.location, **render.HEADERS})


async def blob(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    target = await run_in_threadpool(split_target, node, access, request.path_params["rest"])
    sid = access.repo.storage_id
    switched = _switched(request, access, "blob", target)
    if switched is not None:
        return switched

    def read() -> dict[str, Any]:
        entry = node.git.tree_entry(sid, target.oid, target.path) if target.path else None
        if entry is None:
            raise PageNotFound(f"There is no file {target.path!r} at {target.ref} in {access.full_name}.")
        if entry.type == "tree":
            raise _Redirect(f"/{access.full_name}/tree/{quote(target.ref)}/{render.path_url(target.path)}")
        if entry.type != "blob":
            raise PageNotFound(f"{target.path!r} is a submodule.")
        view = FILES.get((sid, entry.sha, entry.name), lambda: _file_view(node, sid, entry), _file_cost)
        plain = request.query_params.get("plain") == "1"
        return {"entry": entry, **view, "rendered": None if plain else view["rendered"], **_ref_names(node, sid)}

    try:
        values = await run_in_threadpool(read)
    except _Redirect as redirect:
        return redirect.response()
    return await page(request, "blob.html", **_base(request, access), tab="code", target=target,
                      crumbs=crumbs(target.path), **values)


def _file_view(node: Node, sid: str, entry: TreeEntry) -> dict[str, Any]:
    """What a file page shows of a blob: named by its id, so kept as long as it is looked at."""
    head = gitview.read_blob_head(node.git, sid, entry.sha, MAX_SHOWN_BYTES)
    shown = not head.binary and not head.truncated
    text = head.data.decode("utf-8", "replace") if shown else ""
    lines, cut = highlight.lines(entry.name, text) if shown else ([], False)
    rendered = render.markdown(text) if shown and gitview.is_markdown(entry.name) else None
    return {"binary": head.binary, "shown": shown, "rows": highlight.rows(lines), "count": len(lines), "cut": cut,
            "rendered": rendered}


def _file_cost(view: dict[str, Any]) -> int:
    return len(view["rows"]) + len(view["rendered"] or "") + 256


async def blame(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    target = await run_in_threadpool(split_target, node, access, request.path_params["rest"])
    sid = access.repo.storage_id

    def read() -> dict[str, Any]:
        entry = node.git.tree_entry(sid, target.oid, target.path) if target.path else None
        if entry is None or entry.type != "blob":
            raise PageNotFound(f"There is no file {target.path!r} at {target.ref} in {access.full_name}.")
        if entry.size > MAX_SHOWN_BYTES:
            return {"entry": entry, "lines": [], "too_large": True}
        head = gitview.read_blob_head(node.git, sid, entry.sha, 8000)
        if head.binary:
            return {"entry": entry, "lines": [], "too_large": True}
        return {"entry": entry, "lines": gitview.blame(node.git, sid, target.oid, target.path, MAX_BLAME_LINES),
                "too_large": False}

    values = await run_in_threadpool(read)
    return await page(request, "blame.html", **_base(request, access), tab="code", target=target,
                      crumbs=crumbs(target.path), max_lines=MAX_BLAME_LINES, **values)


async def raw(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    target = await run_in_threadpool(split_target, node, access, request.path_params["rest"])
    entry = await run_in_threadpool(node.git.tree_entry, access.repo.storage_id, target.oid, target.path)
    if entry is None or entry.type != "blob" or not target.path:
        raise PageNotFound(f"There is no file {target.path!r} at {target.ref} in {access.full_name}.")
    head = await run_in_threadpool(gitview.read_blob_head, node.git, access.repo.storage_id, entry.sha, 8000)
    if head.binary:
        media = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
        media = media if media.startswith(("image/png", "image/jpeg", "image/gif")) else "application/octet-stream"
    else:
        media = "text/plain; charset=utf-8"  # never text/html: a raw file must not run in this site's origin
    stream = gitview.stream_blob(node.git, access.repo.storage_id, entry.sha)
    return StreamingResponse(stream, media_type=media,
                             headers={**RAW_HEADERS, "Content-Length": str(entry.size)})


async def commits(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    rest = request.path_params.get("rest")
    if rest:
        target = await run_in_threadpool(split_target, node, access, rest)
    else:
        found = await run_in_threadpool(default_target, node, access)
        if found is None:
            return await page(request, "empty.html", **_base(request, access), tab="commits")
        target = found
    number = _page_number(request)
    skip, sid = (number - 1) * COMMITS_PER_PAGE, access.repo.storage_id

    def read() -> list[Commit]:
        # A page of history from a commit never changes: kept by the commit, the page and the path.
        return HISTORY.get((sid, target.oid, skip, target.path), lambda: node.git.log(
            sid, target.oid, limit=COMMITS_PER_PAGE + 1, skip=skip, path=target.path or None), _log_cost)

    found_commits = await run_in_threadpool(read)
    return await page(request, "commits.html", **_base(request, access), tab="commits", target=target,
                      crumbs=crumbs(target.path), commits=found_commits[:COMMITS_PER_PAGE], page_number=number,
                      has_next=len(found_commits) > COMMITS_PER_PAGE)


def _page_number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise PageNotFound("There is no such page.")
    return int(text)


async def commit(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    sha = request.path_params["sha"]
    sid = access.repo.storage_id

    def read() -> dict[str, Any]:
        if not gitview.looks_like_sha(sha):
            raise PageNotFound(f"There is no commit {sha!r} in {access.full_name}.")
        listed = node.git.log(sid, sha, limit=1)  # one process: a bad or unknown id lists nothing
        if not listed:
            raise PageNotFound(f"There is no commit {sha!r} in {access.full_name}.")
        found = listed[0]
        diff = DIFFS.get((sid, found.sha), lambda: gitview.commit_diff(node.git, sid, found.sha,
                                                                     parents=found.parents), _diff_cost)
        return {"commit": found, "diff": diff}

    values = await run_in_threadpool(read)
    return await page(request, "commit.html", **_base(request, access), tab="commits", **values)


async def compare(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    spec = request.path_params["spec"]
    base_ref, dots, head_ref = spec.partition("...")
    if not dots:
        base_ref, dots, head_ref = spec.partition("..")
    if not dots or not base_ref or not head_ref:
        raise PageNotFound("Compare two refs as /compare/BASE...HEAD.")
    sid = access.repo.storage_id

    def read() -> dict[str, Any]:
        base = split_target(node, access, base_ref)
        head = split_target(node, access, head_ref)
        listed, total = gitview.compare_commits(node.git, sid, base.oid, head.oid)
        return {"base": base, "head": head, "commits": listed, "total": total,
                "diff": gitview.compare_diff(node.git, sid, base.oid, head.oid)}

    values = await run_in_threadpool(read)
    return await page(request, "compare.html", **_base(request, access), tab="code", **values)


async def branches(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    listed = await run_in_threadpool(gitview.ref_commit_dates, node.git, access.repo.storage_id, "refs/heads/")
    return await page(request, "refs.html", **_base(request, access), tab="branches", kind="branches", refs=listed)


async def tags(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    listed = await run_in_threadpool(gitview.ref_commit_dates, node.git, access.repo.storage_id, "refs/tags/")
    return await page(request, "refs.html", **_base(request, access), tab="tags", kind="tags", refs=listed)


async def archive(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    rest: str = request.path_params["rest"]
    fmt = next((f for f in ("tar.gz", "zip") if rest.endswith(f".{f}")), None)
    if fmt is None:
        raise PageNotFound("Archives are REF.tar.gz or REF.zip.")
    ref = rest.removesuffix(f".{fmt}")
    target = await run_in_threadpool(split_target, node, access, ref)
    if target.path:
        raise PageNotFound(f"There is no branch, tag or commit named {ref!r} in {access.full_name}.")
    prefix = f"{access.repo.name}-{target.ref.replace('/', '-')}"
    stream = gitview.stream_archive(node.git, access.repo.storage_id, target.oid, fmt, prefix)
    media = "application/gzip" if fmt == "tar.gz" else "application/zip"
    return StreamingResponse(stream, media_type=media, headers={
        **RAW_HEADERS, "Content-Disposition": f'attachment; filename="{quote(prefix)}.{fmt}"'})
