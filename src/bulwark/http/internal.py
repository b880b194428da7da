"""``/internal/cluster/``: what cluster nodes ask of each other, and what git's hook asks of its node.

Every route needs the cluster's shared secret; without it the answer is 401 (or 404
on a node that is not in a cluster), so none of this is reachable by clients.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bulwark.cluster import repair
from bulwark.cluster.client import git_url
from bulwark.cluster.replicated_git import ClusterGit
from bulwark.cluster.runtime import ClusterRuntime
from bulwark.errors import BadRequest, InvalidInput, NotFound, Unauthenticated
from bulwark.node import Node

log = logging.getLogger("bulwark.cluster")
_OID_CHARS = set("0123456789abcdef")


def runtime_of(request: Request) -> tuple[ClusterRuntime, ClusterGit]:
    node: Node = request.app.state.node
    if node.cluster is None or not isinstance(node.git, ClusterGit):
        raise NotFound("not a cluster node")
    return node.cluster, node.git


def authenticated(request: Request) -> tuple[ClusterRuntime, ClusterGit]:
    rt, git = runtime_of(request)
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {rt.secret}".encode()):
        raise Unauthenticated("this endpoint is for the nodes of the cluster")
    return rt, git


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _storage_id(request: Request) -> str:
    storage_id = str(request.path_params["storage_id"])
    if not storage_id.isalnum():
        raise InvalidInput(f"bad storage id {storage_id!r}")
    return storage_id


def _lines(raw: Any) -> list[tuple[str, str, str]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("lines must be a non-empty list of [old, new, ref]")
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            raise InvalidInput("each line is [old, new, ref]")
        old, new, ref = item
        if not (len(old) == len(new) == 40 and set(old + new) <= _OID_CHARS and ref.startswith("refs/")):
            raise InvalidInput(f"bad ref update {item!r}")
        out.append((old, new, ref))
    return out


# -- the push path -----------------------------------------------------------------------


async def hook(request: Request) -> Response:
    """Git's reference-transaction hook on this node, reporting a transaction of a push we lead.

    The body is plain text (the hook must start fast, so it speaks HTTP with the socket module
    alone): the transaction id, the hook's state, then git's ``<old> <new> <ref>`` lines.
    The answer is 200 to let git go on, 409 with the reason to make it abort.
    """
    rt, _ = authenticated(request)
    text = (await request.body()).decode(errors="replace")
    txn, _, rest = text.partition("\n")
    hook_state, _, raw_lines = rest.partition("\n")
    lines = [tuple(line.split(" ", 2)) for line in raw_lines.splitlines() if line.count(" ") >= 2]
    ok, message = await rt.coordinator.on_hook(txn.strip(), hook_state.strip(),
                                               [(a, b, c) for a, b, c in lines])
    return PlainTextResponse(message + "\n", status_code=200 if ok else 409)


async def prepare(request: Request) -> Response:
    rt, _ = authenticated(request)
    storage_id = _storage_id(request)
    body = await _json(request)
    source = str(body.get("source", ""))
    if source not in rt.urls().values():
        raise InvalidInput("the source must be a node of this cluster")
    vote = await rt.transactions.prepare(
        storage_id, str(body.get("txn", "")), _lines(body.get("lines")), git_url(source, storage_id),
        rt.git_source_config(), pack=_pack(body.get("pack")), leader=source, token=_token(body),
    )
    return JSONResponse({"vote": vote})


def _pack(raw: Any) -> bytes | None:
    """The thin pack a leader sent along with a prepare request, if any."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInput("pack must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise InvalidInput("pack is not valid base64") from None


def _token(body: dict[str, Any]) -> str | None:
    """The leader's lock token (its fencing token), if it sent one."""
    token = body.get("token")
    return token if isinstance(token, str) and token else None


async def commit(request: Request) -> Response:
    rt, _ = authenticated(request)
    body = await _json(request)
    await rt.transactions.commit(str(body.get("txn", "")), _token(body))
    return JSONResponse({"committed": True})


async def abort(request: Request) -> Response:
    rt, _ = authenticated(request)
    body = await _json(request)
    await rt.transactions.abort(str(body.get("txn", "")))
    return JSONResponse({"aborted": True})


# -- replicas ------------------------------------------------------------------------------


async def put_repo(request: Request) -> Response:
    _, git = authenticated(request)
    storage_id = _storage_id(request)
    body = await _json(request)
    branch = str(body.get("default_branch") or "main")
    await run_in_threadpool(git.local_init, storage_id, branch)
    return JSONResponse({"created": True})


async def delete_repo(request: Request) -> Response:
    _, git = authenticated(request)
    await run_in_threadpool(git.local_remove, _storage_id(request))
    return Response(status_code=204)


async def checksum(request: Request) -> Response:
    _, git = authenticated(request)
    value = await run_in_threadpool(git.local_checksum, _storage_id(request))
    return JSONResponse({"checksum": value})


async def refs(request: Request) -> Response:
    _, git = authenticated(request)
    storage_id = _storage_id(request)
    patterns = request.query_params.getlist("pattern")
    found = await run_in_threadpool(git.local_refs, storage_id, *patterns)
    return JSONResponse({"refs": [{"name": r.name, "oid": r.oid, "type": r.type} for r in found]})


async def get_head(request: Request) -> Response:
    _, git = authenticated(request)
    storage_id = _storage_id(request)
    branch = await run_in_threadpool(git.local_head, storage_id)
    return JSONResponse({"branch": branch})


async def set_head(request: Request) -> Response:
    _, git = authenticated(request)
    body = await _json(request)
    await run_in_threadpool(git.local_set_head, _storage_id(request), str(body.get("branch", "")))
    return JSONResponse({"ok": True})


async def sync(request: Request) -> Response:
    """Make this node's replica identical to ``source``'s (``rebuild``: from scratch); see cluster/repair.py."""
    rt, git = authenticated(request)
    storage_id = _storage_id(request)
    body = await _json(request)
    source = str(body.get("source", ""))
    rebuild = body.get("rebuild", False)
    if not isinstance(rebuild, bool):
        raise InvalidInput("rebuild must be true or false")
    result = await run_in_threadpool(repair.repair, rt, git, storage_id, source, rebuild=rebuild)
    return JSONResponse({"checksum": result})


routes = [
    Route("/internal/cluster/hook", hook, methods=["POST"]),
    Route("/internal/cluster/repos/{storage_id}", put_repo, methods=["PUT"]),
    Route("/internal/cluster/repos/{storage_id}", delete_repo, methods=["DELETE"]),
    Route("/internal/cluster/repos/{storage_id}/prepare", prepare, methods=["POST"]),
    Route("/internal/cluster/repos/{storage_id}/commit", commit, methods=["POST"]),
    Route("/internal/cluster/repos/{storage_id}/abort", abort, methods=["POST"]),
    Route("/internal/cluster/repos/{storage_id}/checksum", checksum, methods=["GET"]),
    Route("/internal/cluster/repos/{storage_id}/refs", refs, methods=["GET"]),
    Route("/internal/cluster/repos/{storage_id}/head", set_head, methods=["PUT"]),
    Route("/internal/cluster/repos/{storage_id}/head", get_head, methods=["GET"]),
    Route("/internal/cluster/repos/{storage_id}/sync", sync, methods=["POST"]),
]
