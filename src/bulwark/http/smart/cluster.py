"""In a cluster: the node that serves a request, and fetches of objects this node's copy lacks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from bulwark.errors import Unavailable
from bulwark.git import pktline
from bulwark.gitservice.session import RECEIVE_PACK
from bulwark.http.smart.access import _node
from bulwark.roles import Traffic
from bulwark.services.repositories import RepoAccess

log = logging.getLogger("bulwark.git")

# In a cluster, a fetch's wants are looked up in this node's copy (at most this many of them),
# and a copy that another node chose may take this long to receive a push still committing.
WANTS_CHECKED = 10_000
CATCH_UP_WAIT = 1.0


async def _route_in_cluster(request: Request, access: RepoAccess, service: str) -> Response | None:
    """In a cluster: the response of the node that should serve this request, or None to serve it here."""
    node = _node(request)
    rt = node.cluster
    if rt is None or request.url.path.startswith("/internal/cluster/"):
        return None
    storage_id = access.repo.storage_id
    if rt.forwarder.is_routed(request):
        # Another node chose us; serve locally or say why not (never bounce it on).
        if not await run_in_threadpool(node.git.exists, storage_id):
            raise Unavailable(f"the data of {access.full_name} is not on this node")
        return None
    want = Traffic.WRITE if service == RECEIVE_PACK else Traffic.READ
    route = await run_in_threadpool(rt.route, storage_id, want)
    if route is None:
        raise Unavailable(f"no up-to-date copy of {access.full_name} is reachable right now; try again shortly")
    if route.local:
        return None
    return await rt.forwarder.forward(request, route.url)


async def _fetch_elsewhere(
    request: Request, access: RepoAccess, prelude: bytes, body: AsyncGenerator[bytes, None]
) -> Response | None:
    """A fetch that wants objects this node's copy lacks, answered by another up-to-date copy.

    The client's advertisement may have come from a replica a push reached first, or this
    copy may have failed a push and not be marked behind yet; git here would answer "not
    our ref". A fetch another node sent here is given a moment for a commit under way."""
    node = _node(request)
    rt = node.cluster
    if rt is None or request.url.path.startswith("/internal/cluster/"):
        return None
    storage_id = access.repo.storage_id
    # Parsing the wants is CPU work (up to SECTION_PACKETS packets): in the worker thread too.
    missing = await run_in_threadpool(
        lambda: node.git.missing_objects(storage_id, pktline.wanted(prelude, limit=WANTS_CHECKED))
    )
    if not missing:
        return None
    if rt.forwarder.is_routed(request):
        deadline = asyncio.get_running_loop().time() + CATCH_UP_WAIT
        while missing and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            missing = await run_in_threadpool(node.git.missing_objects, storage_id, missing)
        return None
    route = await run_in_threadpool(rt.route, storage_id, Traffic.READ, {rt.name})
    if route is None:
        return None
    log.info("fetch of %s wants %s, which this node's copy lacks: sent to %s", access.full_name, missing[0], route.node)
    return await rt.forwarder.forward(request, route.url, body=_replay(prelude, body))


async def _replay(prelude: bytes, body: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    try:
        yield prelude
        async for chunk in body:
            yield chunk
    finally:
        await body.aclose()
