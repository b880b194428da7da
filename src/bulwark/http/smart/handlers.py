"""The routes: ``info/refs``, ``git-upload-pack`` and ``git-receive-pack``, and refusals in git's words."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bulwark.cluster.push_leader import Push
from bulwark.errors import BadRequest, GitError, NotFound, PayloadTooLarge, Unavailable
from bulwark.git import pktline, report
from bulwark.gitservice import slots as gitslots
from bulwark.gitservice.access import git_config
from bulwark.gitservice.push import Kept, lead_push, recorder
from bulwark.gitservice.session import RECEIVE_PACK, SECTION_LIMITS, SECTION_PACKETS, UPLOAD_PACK, closed_on_error
from bulwark.http import gitbody
from bulwark.http.smart.access import _advertised_service, _authorize, _node
from bulwark.http.smart.body import (
    REFUSAL_DRAIN_LIMIT,
    _check_content_type,
    _discard_rest,
    _git_protocol,
    _no_more,
    _oversized_push,
    _speaks_v2,
)
from bulwark.http.smart.cluster import _fetch_elsewhere, _route_in_cluster
from bulwark.http.smart.session import NO_CACHE, GitResponse, _kept_response, _release, _session, _slot
from bulwark.monitoring.metrics import Refusal, count_refusal
from bulwark.services.repositories import RepoAccess

log = logging.getLogger("bulwark.git")

# Bodies of fetch requests are wants and haves only; a generous cap still stops abuse.
UPLOAD_BODY_LIMIT = 256 * 1024**2
# An ``ls-refs`` request up to this size may be answered from kept answers (git/adverts.py).
LS_REFS_KEPT_LIMIT = 64 * 1024
# A fetch's body up to this size is read whole before it gets a git process: wants and haves are
# made in memory and sent at once, and git answers nothing before their end anyway, so a client
# that trickles them holds a connection (given up by the rate floor) but no git process.
FETCH_READ_WHOLE = 1024**2


async def info_refs(request: Request) -> Response:
    service = _advertised_service(request)
    access = await _authorize(request, service)
    node = _node(request)
    forwarded = await _route_in_cluster(request, access, service)
    if forwarded is not None:
        return forwarded
    protocol = _git_protocol(request)
    # http-backend announces the service, except in protocol v2 whose first line says "version 2".
    prefix = b"" if _speaks_v2(protocol) else pktline.encode(f"# service=git-{service}\n") + pktline.flush()
    media_type = f"application/x-git-{service}-advertisement"
    # Fetches are kept (most find nothing new); pushes are rare and change the refs anyway.
    kept = Kept(node.git, access, ("info/refs", protocol)) if service == UPLOAD_PACK else None
    if kept is not None and kept.answer is not None:
        return Response(prefix + kept.answer, media_type=media_type, headers=NO_CACHE)
    try:
        slot = await _slot(request)
    except gitslots.Busy:
        count_refusal(request.app, service, Refusal.BUSY)
        raise  # a 503 whose text git shows as "remote:" lines
    try:
        proc = await node.git.spawn(
            access.repo.storage_id, service, advertise=True, protocol=protocol,
            extra_config=git_config(access, service),
        )
    except BaseException:
        _release(slot)
        raise
    session = _session(proc, request, access, service, slot)
    async with closed_on_error(session):
        session.no_input()
        first = await session.first_output()
        if not first and proc.returncode != 0:
            raise GitError(f"git-{service} could not list the refs of {access.full_name}: {session.last_error()}")
        if kept is not None:
            return await _kept_response(kept, session, first, prefix, media_type)
    return GitResponse(session, prefix + first, media_type)


async def upload_pack(request: Request) -> Response:
    return await _rpc(request, UPLOAD_PACK)


async def receive_pack(request: Request) -> Response:
    return await _rpc(request, RECEIVE_PACK)


routes: list[BaseRoute] = [
    # Cluster nodes fetch each other's objects by storage id, with the cluster secret.
    Route("/internal/cluster/git/{storage_id}/info/refs", info_refs, methods=["GET"]),
    Route("/internal/cluster/git/{storage_id}/git-upload-pack", upload_pack, methods=["POST"]),
    # Replicas fetch by storage id (names may change under them), with their credential.
    Route("/manage/v1/replication/git/{storage_id}/info/refs", info_refs, methods=["GET"]),
    Route("/manage/v1/replication/git/{storage_id}/git-upload-pack", upload_pack, methods=["POST"]),
    Route("/{owner}/{repo}/info/refs", info_refs, methods=["GET"]),
    Route("/{owner}/{repo}/git-upload-pack", upload_pack, methods=["POST"]),
    Route("/{owner}/{repo}/git-receive-pack", receive_pack, methods=["POST"]),
]


async def _rpc(request: Request, service: str) -> Response:
    try:
        access = await _authorize(request, service)
    except Unavailable as exc:
        # Maintenance, a fenced or cut-off node, an HA replica: git shows no text of a POST's 503.
        return await _unavailable(request, service, exc.message)
    node = _node(request)
    _check_content_type(request, service)
    forwarded = await _route_in_cluster(request, access, service)
    if forwarded is not None:
        return forwarded
    limit = node.settings.max_push_bytes if service == RECEIVE_PACK else UPLOAD_BODY_LIMIT
    oversized = _oversized_push(request, limit) if service == RECEIVE_PACK else None
    if oversized is None:
        gitbody.check_declared_length(request, limit)
    framing = gitbody.FetchFraming() if service == UPLOAD_PACK else None
    grace = gitbody.FETCH_RATE_GRACE if service == UPLOAD_PACK else gitbody.PUSH_RATE_GRACE
    body = gitbody.decoded_body(request, limit=oversized or limit, idle_timeout=node.settings.body_idle_timeout,
                                framing=framing, rate_grace=grace)
    protocol = _git_protocol(request)
    try:
        # Of a fetch's first section only its first packet matters here (is it ls-refs?).
        prelude, section = await gitbody.first_section(
            body, SECTION_LIMITS[service], max_packets=SECTION_PACKETS[service],
            keep=1 if service == UPLOAD_PACK else None,
        )
        # The ref updates of a push: replication will replicate and vote on exactly these.
        request_ = pktline.parse_receive_request(section) if service == RECEIVE_PACK else None
        commands = request_.commands if request_ is not None else ()
        capabilities = request_.capabilities if request_ is not None else ()
        if service == UPLOAD_PACK and _speaks_v2(protocol) and section and section[0].payload == b"command=ls-refs\n":
            prelude, whole = await gitbody.read_small(prelude, body, LS_REFS_KEPT_LIMIT)
            if whole:
                return await _ls_refs(request, access, protocol, prelude)
        if service == UPLOAD_PACK and node.cluster is not None:
            elsewhere = await _fetch_elsewhere(request, access, prelude, body)
            if elsewhere is not None:
                return elsewhere
        if service == UPLOAD_PACK:
            prelude, whole = await gitbody.read_small(prelude, body, FETCH_READ_WHOLE)
            if whole:
                body = _no_more()
    except BaseException:
        await body.aclose()
        raise
    if oversized is not None:
        return await _refused(request, body, commands, capabilities, _too_large(limit), Refusal.TOO_LARGE)
    try:
        # Before the repository's lock: a push waiting for a slot holds up no other push.
        slot = await _slot(request)
    except gitslots.Busy as exc:
        if commands:
            return await _refused(request, body, commands, capabilities, exc.message, Refusal.BUSY)
        return await _fetch_refused(request, body, exc.message)
    except BaseException:
        await body.aclose()
        raise
    extra_config, extra_env = git_config(access, service), dict[str, str]()
    push: Push | None = None
    if commands and node.cluster is not None:
        try:
            push = await node.cluster.coordinator.begin(access.repo.storage_id)
        except (Unavailable, NotFound) as exc:
            # No majority, a busy lock, a stale copy: refused in git's words, not with a bare 503.
            _release(slot)
            return await _refused(request, body, commands, capabilities, exc.message, Refusal.REPLICAS)
        except BaseException:
            _release(slot)
            await body.aclose()
            raise
        hook_config, extra_env = node.cluster.hook_setup(push.txn)
        extra_config.update(hook_config)
    try:
        proc = await node.git.spawn(
            access.repo.storage_id, service, advertise=False, protocol=protocol, extra_config=extra_config,
            extra_env=extra_env,
        )
    except BaseException:
        _release(slot)
        if push is not None:
            await node.cluster.coordinator.cancel(push)  # type: ignore[union-attr]
        raise
    session = _session(proc, request, access, service, slot)
    if commands:
        principal = getattr(request.state, "principal", None)
        session.on_success = recorder(node, access, commands, principal.account if principal else None)
    if push is not None:
        lead_push(session, node, push, capabilities)
    try:
        async with closed_on_error(session):
            session.send_input(prelude, body)
            first = await session.first_output()
            # Without report-status, receive-pack says nothing and exits 0 even when it fails;
            # its stderr is then the only account of a truncated or refused push.
            if not first and (proc.returncode != 0 or session.complained()):
                if push is not None and push.refusal:
                    # git dies ("ref updates aborted by hook") when the replicas vote an update down.
                    await session.close()  # which finishes the push: its lock is released
                    count_refusal(request.app, service, Refusal.REPLICAS)
                    return _report(report.refusal([c.ref for c in commands], push.refusal, capabilities))
                raise BadRequest(f"git-{service} rejected the request: {session.last_error()}")
    except PayloadTooLarge:
        if not commands:
            raise
        # git stopped at the end of its input and changed nothing; the client is still sending.
        if not await _discard_rest(request, REFUSAL_DRAIN_LIMIT, node.settings.body_idle_timeout):
            raise
        count_refusal(request.app, service, Refusal.TOO_LARGE)
        return _report(report.refusal([c.ref for c in commands], _too_large(limit), capabilities))
    return GitResponse(session, first, f"application/x-git-{service}-result")


async def _refused(
    request: Request, body: AsyncGenerator[bytes, None], commands: Sequence[pktline.RefUpdate],
    capabilities: Sequence[str], reason: str, kind: Refusal,
) -> Response:
    """Refuse a push whose commands were read: every ref ``ng`` with ``reason``, after the rest of
    the body (git reads no answer before it has sent it all)."""
    node = _node(request)
    try:
        async for _ in body:
            pass
    except PayloadTooLarge:
        if not await _discard_rest(request, REFUSAL_DRAIN_LIMIT, node.settings.body_idle_timeout):
            raise
    finally:
        await body.aclose()
    log.warning("push to %s refused: %s", request.url.path, reason)
    count_refusal(request.app, RECEIVE_PACK, kind)
    return _report(report.refusal([c.ref for c in commands], reason, capabilities))


def _too_large(limit: int) -> str:
    return f"this push is larger than the limit of {limit} bytes"


def _report(answer: bytes) -> Response:
    return Response(answer, media_type=f"application/x-git-{RECEIVE_PACK}-result", headers=NO_CACHE)


async def _unavailable(request: Request, service: str, message: str) -> Response:
    """Refuse a fetch or push this node cannot serve now, once its request is read, in git's words."""
    node = _node(request)
    limit = node.settings.max_push_bytes if service == RECEIVE_PACK else UPLOAD_BODY_LIMIT
    body = gitbody.decoded_body(request, limit=limit, idle_timeout=node.settings.body_idle_timeout)
    try:
        _, section = await gitbody.first_section(body, SECTION_LIMITS[service], max_packets=SECTION_PACKETS[service],
                                                 keep=1 if service == UPLOAD_PACK else None)
        request_ = pktline.parse_receive_request(section) if service == RECEIVE_PACK else None
    except BaseException:
        await body.aclose()
        raise
    if request_ is not None and request_.commands:
        return await _refused(request, body, request_.commands, request_.capabilities, message, Refusal.UNAVAILABLE)
    count_refusal(request.app, service, Refusal.UNAVAILABLE)
    return await _fetch_refused(request, body, message, count=False)


def _fetch_error(message: str) -> Response:
    """A fetch refused after its request was read: git prints "fatal: remote error: <message>"."""
    return Response(pktline.encode(f"ERR {message}\n"), media_type=f"application/x-git-{UPLOAD_PACK}-result",
                    headers=NO_CACHE)


async def _fetch_refused(request: Request, body: AsyncGenerator[bytes, None], message: str, *,
                         count: bool = True) -> Response:
    try:
        async for _ in body:
            pass
    finally:
        await body.aclose()
    log.warning("fetch from %s refused: %s", request.url.path, message)
    if count:
        count_refusal(request.app, UPLOAD_PACK, Refusal.BUSY)
    return _fetch_error(message)


async def _ls_refs(request: Request, access: RepoAccess, protocol: str | None, whole: bytes) -> Response:
    """Protocol v2's ``ls-refs``, whose whole request is ``whole``: from the kept answers if
    the refs are unchanged since git last gave this answer."""
    node = _node(request)
    media_type = f"application/x-git-{UPLOAD_PACK}-result"
    kept = Kept(node.git, access, ("ls-refs", protocol, whole))
    if kept.answer is not None:
        return Response(kept.answer, media_type=media_type, headers=NO_CACHE)
    try:
        slot = await _slot(request)
    except gitslots.Busy as exc:
        count_refusal(request.app, UPLOAD_PACK, Refusal.BUSY)
        return _fetch_error(exc.message)
    try:
        proc = await node.git.spawn(
            access.repo.storage_id, UPLOAD_PACK, advertise=False, protocol=protocol,
            extra_config=git_config(access, UPLOAD_PACK),
        )
    except BaseException:
        _release(slot)
        raise
    session = _session(proc, request, access, UPLOAD_PACK, slot)
    async with closed_on_error(session):
        session.send_input(whole, _no_more())
        first = await session.first_output()
        if not first and (proc.returncode != 0 or session.complained()):
            raise BadRequest(f"git-{UPLOAD_PACK} rejected the request: {session.last_error()}")
        return await _kept_response(kept, session, first, b"", media_type)
